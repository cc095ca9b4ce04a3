"""`cityclf pixiv train/eval --config FILE.yaml`: the settings, parsed and checked.

    data:
      dataset: pixiv-data        # the ingested folder (cityclf pixiv ingest)
      store: pixiv.db            # its embeddings (cityclf embed pixiv-data --store pixiv.db --clip CLIP)
      clip: openai/clip-vit-large-patch14-336    # the CLIP they were made with (folder or hub id)
      split: artist              # artist | time | random (random: the ungrouped leak test only)
      test_fraction: 0.2
      val_fraction: 0.1
      stream: auto               # read training embeddings per batch from the store: auto (> 50,000 works), yes, no
      max_validation: 5000       # works validated during training (a seeded sample when there are more)
    target:
      name: weighted_log         # weighted_log | bookmark_rate | age_aware | weighted_log_ratio (targets.py)
      alpha: 0.7                 # weighted_log, age_aware: 0.7; weighted_log_ratio: 0.5 (bookmarks)
      beta: 0.2                  # weighted_log_ratio only: views
      gamma: 0.3                 # weighted_log_ratio only: the smoothed bookmark rate (alpha+beta+gamma = 1)
      k: 100
      per_artist: no             # yes: the score minus the artist's training mean ("better than their usual")
    model:
      base: PixivPopularity
      rev: v1
      arch: popularity-multitask # popularity | popularity-multitask | popularity-attention
      width: 256                 # hidden width
    train:
      lr: 0.001
      epochs: 40                 # or steps: samples, as cityclf train counts them
      batch: 64
      seed: 0
      weight_decay: 0.01
      loss: mse                  # mse | pairwise (logistic, over the pairs of each batch: a ranking loss)
      uncertainty_lr: 0.05       # the learned log-variances' own rate (no weight decay)
      early_stopping: 0
      device: auto
    eval:
      splits: [artist, time, random]
      seeds: [0, 1, 2]
      models: [popularity, popularity-multitask, popularity-attention]
      losses: [mse]              # each model is trained with each of these (e.g. [mse, pairwise])
      bootstrap: 1000            # resamples (by artist) for the 95% intervals

Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..kinds.popularity_nets import NETS
from ..train.config import name_part, read_yaml
from ..numbers import check_flag, real, whole
from .splits import SPLITS
from ..kinds.popularity import LOSSES
from .targets import TARGETS, check_weights

ALLOWED = {
    "data": {"dataset", "store", "clip", "split", "test_fraction", "val_fraction", "stream", "max_validation"},
    "target": {"name", "alpha", "beta", "gamma", "k", "per_artist"},
    "model": {"base", "rev", "arch", "width"},
    "train": {"lr", "epochs", "steps", "batch", "seed", "weight_decay", "early_stopping", "device", "cosine",
              "warmup", "eval_every", "loss", "uncertainty_lr"},
    "eval": {"splits", "seeds", "models", "losses", "bootstrap"},
}


@dataclass(frozen=True)
class PixivSettings:
    source: str
    dataset: Path
    store: Path
    clip: str
    split: str = "artist"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    stream: str = "auto"
    max_validation: int = 5000
    target: str = "weighted_log"
    alpha: float = 0.7
    beta: float | None = None
    gamma: float | None = None
    k: float = 100.0
    per_artist: bool = False
    base: str = "PixivPopularity"
    rev: str = "v1"
    arch: str = "popularity-multitask"
    width: int = 256
    lr: float = 1e-3
    epochs: float | None = 40.0
    steps: int | None = None
    batch: int = 64
    seed: int = 0
    weight_decay: float = 0.01
    loss: str = "mse"
    uncertainty_lr: float = 0.05
    early_stopping: int = 0
    device: str = "auto"
    cosine: bool = True
    warmup: int | None = None
    eval_every: int | None = None
    eval_splits: tuple = ("artist", "time", "random")
    eval_seeds: tuple = (0,)
    eval_models: tuple = tuple(NETS)
    eval_losses: tuple = ("mse",)
    bootstrap: int = 1000
    extra: dict = field(default_factory=dict)


def _num(section: dict, key: str, where: str, kind, lo=None, default=None):
    if key not in section or section[key] is None:
        return default
    n, why = (whole(lo) if kind is int else real(lo)).problem(section[key])
    if why:
        raise ConfigError(f"{where}: {key} {why}, not {section[key]!r}")
    return n


def _path(base: Path, text, what: str, source: str) -> Path:
    if not text:
        raise ConfigError(f"{source}: data.{what} is required")
    p = Path(os.path.expanduser(str(text)))
    return p if p.is_absolute() else base / p


def parse_settings(data: dict, source: str, base_dir: Path) -> PixivSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping with data:, target:, model:, train: sections")
    unknown = set(data) - set(ALLOWED)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; allowed: {', '.join(ALLOWED)}")
    sections = {}
    for name, keys in ALLOWED.items():
        body = data.get(name) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: '{name}' must be a mapping")
        bad = set(body) - keys
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in sorted(bad))}; "
                              f"allowed: {', '.join(sorted(keys))}")
        sections[name] = body
    d, t, m, tr, ev = (sections[k] for k in ("data", "target", "model", "train", "eval"))
    if not d.get("clip"):
        raise ConfigError(f"{source}: data.clip is required (the CLIP the store's embeddings were made with)")
    split = str(d.get("split", "artist"))
    if split not in SPLITS:
        raise ConfigError(f"{source}: data.split must be one of {', '.join(SPLITS)}, not {split!r}")
    target = str(t.get("name", "weighted_log"))
    if target not in TARGETS:
        raise ConfigError(f"{source}: target.name must be one of {', '.join(TARGETS)}, not {target!r}")
    arch = str(m.get("arch", "popularity-multitask"))
    if arch not in NETS:
        raise ConfigError(f"{source}: model.arch must be one of {', '.join(NETS)}, not {arch!r}")
    stream = str(d.get("stream", "auto")).lower()
    stream = {"true": "yes", "false": "no"}.get(stream, stream)
    if stream not in ("auto", "yes", "no"):
        raise ConfigError(f"{source}: data.stream must be auto, yes or no")
    lists = {}
    for key, allowed in (("splits", SPLITS), ("models", tuple(NETS)), ("losses", LOSSES)):
        value = ev.get(key)
        if value is not None:
            value = [value] if isinstance(value, str) else list(value)
            wrong = [v for v in value if v not in allowed]
            if wrong or not value:
                raise ConfigError(f"{source}: eval.{key} takes some of {', '.join(allowed)}; not {wrong or value}")
            lists[key] = tuple(value)
    seeds = ev.get("seeds", [0])
    try:
        seeds = tuple(int(s) for s in ([seeds] if isinstance(seeds, int) else seeds))
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: eval.seeds must be a list of integers") from None
    epochs = _num(tr, "epochs", source, float, 0.01)
    steps = _num(tr, "steps", source, int, 1)
    if epochs is not None and steps is not None:
        raise ConfigError(f"{source}: give train.epochs or train.steps, not both")
    loss = str(tr.get("loss", "mse"))
    if loss not in LOSSES:
        raise ConfigError(f"{source}: train.loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    per_artist = t.get("per_artist", False)
    if not isinstance(per_artist, bool):
        raise ConfigError(f"{source}: target.per_artist must be yes or no, not {per_artist!r}")
    alpha = _num(t, "alpha", source, float, None, 0.5 if target == "weighted_log_ratio" else 0.7)
    beta, gamma = (_num(t, key, source, float) for key in ("beta", "gamma"))
    if target != "weighted_log_ratio" and (beta is not None or gamma is not None):
        raise ConfigError(f"{source}: target.beta and target.gamma belong to target.name: weighted_log_ratio, "
                          f"not {target}")
    if target == "weighted_log_ratio":
        beta = 0.2 if beta is None else beta
        gamma = 0.3 if gamma is None else gamma
    try:
        check_weights(target, alpha, beta, gamma)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    clip = str(d["clip"])
    if not Path(os.path.expanduser(clip)).is_absolute() and (base_dir / clip).exists():
        clip = str(base_dir / clip)  # a folder next to the config; otherwise a hub id or a path from here
    kw = dict(
        source=source, dataset=_path(base_dir, d.get("dataset"), "dataset", source),
        store=_path(base_dir, d.get("store"), "store", source), clip=clip, split=split,
        test_fraction=_num(d, "test_fraction", source, float, 0.0, 0.2),
        val_fraction=_num(d, "val_fraction", source, float, 0.0, 0.1), stream=stream,
        max_validation=_num(d, "max_validation", source, int, 1, 5000), target=target,
        alpha=alpha, beta=beta, gamma=gamma, k=_num(t, "k", source, float, 0.0, 100.0), per_artist=per_artist,
        base=name_part(m.get("base", "PixivPopularity"), "model.base", source),
        rev=name_part(m.get("rev", "v1"), "model.rev", source), arch=arch,
        width=_num(m, "width", source, int, 1, 256), lr=_num(tr, "lr", source, float, 0.0, 1e-3),
        epochs=epochs if epochs is not None or steps is not None else 40.0, steps=steps,
        batch=_num(tr, "batch", source, int, 2, 64), seed=_num(tr, "seed", source, int, None, 0),
        weight_decay=_num(tr, "weight_decay", source, float, 0.0, 0.01), loss=loss,
        uncertainty_lr=_num(tr, "uncertainty_lr", source, float, 0.0, 0.05),
        bootstrap=_num(ev, "bootstrap", source, int, 0, 1000),
        early_stopping=_num(tr, "early_stopping", source, int, 0, 0), device=str(tr.get("device", "auto")),
        cosine=check_flag(tr.get("cosine", True), f"{source}: train.cosine"), warmup=_num(tr, "warmup", source, int, 0),
        eval_every=_num(tr, "eval_every", source, int, 1), eval_seeds=seeds,
    )
    if "splits" in lists:
        kw["eval_splits"] = lists["splits"]
    if "models" in lists:
        kw["eval_models"] = lists["models"]
    if "losses" in lists:
        kw["eval_losses"] = lists["losses"]
    for key in ("lr", "uncertainty_lr"):
        if kw[key] <= 0:
            raise ConfigError(f"{source}: train.{key} must be positive")
    return PixivSettings(**kw)


def load_settings(path: str | os.PathLike) -> PixivSettings:
    path = Path(path)
    return parse_settings(read_yaml(path), str(path), path.parent)


__all__ = ["PixivSettings", "load_settings", "parse_settings"]
