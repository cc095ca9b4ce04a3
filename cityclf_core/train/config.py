"""Training configs: the reference's YAML keys (and a few of ours), parsed and validated."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..numbers import PIXELS, check_flag, real, whole
from ..kinds import HeadKind, get_kind, kind_choices, kind_names
from ..loading.head_files import HeadConfig

REFERENCE_CLIPS = {  # model.clip in the reference configs
    "CLIP": {"features": 768, "hidden": 1024, "clip_model": "openai/clip-vit-large-patch14-336"},
    "META": {"features": 1024, "hidden": 1280, "clip_model": None},  # ViT-H metaclip: .npy embeddings only
}
#: every number a config takes, and what it may be (steps count samples, as in the reference)
NUMBERS = {
    "train": {"lr": real(0.0, above=True), "weight_decay": real(0.0), "val_fraction": real(0.0, 1.0),
              "steps": whole(1, 10**10), "batch": whole(1, 10**6), "seed": whole(0, 2**63 - 1),
              "warmup": whole(0, 10**10), "early_stopping": whole(0, 10**6), "eval_every": whole(1, 10**10),
              "save_every": whole(1, 10**10)},
    "data": {"crops_per_image": whole(1, 1000), "tile_size": PIXELS, "workers": whole(1, 256),
             "batch_size": whole(1, 65536)},
}
LOSS_WEIGHT = real(0.0)

ALLOWED = {
    "model": {"base", "rev", "arch", "clip", "clip_model"},
    "train": {"lr", "steps", "batch", "cosine", "val_fraction", "seed", "warmup", "device", "early_stopping",
              "eval_every", "loss", "weight_decay", "save_every"},
    "data": {"random_crops", "crops_per_image", "tile_size", "workers", "batch_size"},
    "labels": None,  # integer keys, each {name, loss}
}


@dataclass
class TrainConfig:
    base: str
    rev: str
    arch: str
    clip: str = "CLIP"
    clip_model: str | None = None  # the CLIP images are embedded with (hub id or folder)
    lr: float = 1e-6
    steps: int = 100_000  # samples, as in the reference
    batch: int = 1
    cosine: bool = True
    labels: dict[int, tuple[str, float]] = field(default_factory=dict)  # class -> (name, loss weight)
    val_fraction: float = 0.1
    seed: int = 0
    warmup: int | None = None  # samples; default: none with cosine, 5000 (as the reference) without
    device: str = "auto"
    early_stopping: int = 0  # evaluations without improvement before stopping; 0 = never
    eval_every: int | None = None  # optimizer steps; default: about 25 evaluations per run
    loss: str | None = None  # score heads: l1 (default), mse or huber
    weight_decay: float = 0.01
    save_every: int | None = None  # optimizer steps between checkpoints; default: at every evaluation
    random_crops: bool = True  # class heads on images: random tile-sized crops, as the reference
    crops_per_image: int = 4
    tile_size: int | None = None  # default 2 x the CLIP input size
    workers: int = 2
    batch_size: int | None = None  # CLIP views per forward when embedding
    clip_record: dict | None = None  # not a YAML key: the CLIP images were embedded with (loading/clip_records.py)

    @property
    def name(self) -> str:
        return f"{self.base}-{self.rev}"

    @property
    def features(self) -> int:
        return REFERENCE_CLIPS[self.clip]["features"]

    @property
    def hidden(self) -> int:
        return REFERENCE_CLIPS[self.clip]["hidden"]

    @property
    def kind(self) -> HeadKind:
        return get_kind(self.arch)

    @property
    def outputs(self) -> int:
        return self.kind.train_outputs(self)

    @property
    def optimizer_steps(self) -> int:
        return max(1, self.steps // self.batch)

    def head_config(self) -> HeadConfig:
        extra = {"clip": dict(self.clip_record)} if self.clip_record else {}
        return HeadConfig(name=self.base, rev=self.rev, arch=self.arch, labels=self.kind.train_labels(self),
                          features=self.features, hidden=self.kind.train_hidden(self), outputs=self.outputs,
                          extra=extra)


def read_yaml(path: Path):
    """A YAML config file's content; clear errors for a missing file or invalid YAML."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config {path} not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
    """Read a reference-format YAML (with our optional keys); unknown or contradictory keys are errors."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping with 'model:' and 'train:' sections")
    return parse_config(data, str(path), overrides)


def parse_config(data: dict, source: str = "config", overrides: dict | None = None) -> TrainConfig:
    unknown = set(data) - set(ALLOWED)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(ALLOWED)}")
    for section, allowed in ALLOWED.items():
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping")
        if allowed is not None:
            bad = set(body) - allowed
            if bad:
                raise ConfigError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(bad))}; "
                                  f"allowed in {section}: {', '.join(sorted(allowed))}")
    model = data.get("model")
    if not model:
        raise ConfigError(f"{source}: the 'model' section is required (base, rev, arch)")
    arch = model.get("arch")
    if arch not in kind_names():
        raise ConfigError(f"{source}: model.arch must be {kind_choices()}, not {arch!r}")
    clip = model.get("clip", "CLIP")
    if clip not in REFERENCE_CLIPS:
        raise ConfigError(f"{source}: model.clip must be CLIP or META (the reference's names), not {clip!r}; "
                          "to embed images with another CLIP use model.clip_model")
    kw: dict = {}
    for section, rules in NUMBERS.items():
        body = data.get(section) or {}
        for key, rule in rules.items():
            if body.get(key) is not None:
                kw[key] = rule.check(body[key], f"{source}: {section}.{key}")
    for section, key in (("train", "cosine"), ("data", "random_crops")):
        if key in (data.get(section) or {}):
            kw[key] = check_flag(data[section][key], f"{source}: {section}.{key}")
    for key in ("device", "loss"):
        if key in (data.get("train") or {}):
            kw[key] = _text(data["train"][key], f"train.{key}", source)
    labels = {}
    raw_labels = data.get("labels") or {}
    for k, v in raw_labels.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: label keys must be class numbers (0, 1, ...), not {k!r}") from None
        v = v or {}
        if not isinstance(v, dict) or set(v) - {"name", "loss"}:
            raise ConfigError(f"{source}: labels.{k} takes 'name' and 'loss' (the class weight)")
        labels[idx] = (str(v.get("name", idx)), LOSS_WEIGHT.check(v.get("loss", 1.0), f"{source}: labels.{k}.loss"))
    clip_model = model.get("clip_model")
    cfg = TrainConfig(base=name_part(model.get("base", "unknown"), "model.base", source),
                      rev=name_part(model.get("rev", "v0.0"), "model.rev", source), arch=arch, clip=clip,
                      clip_model=None if clip_model is None else _text(clip_model, "model.clip_model", source),
                      labels=labels, **kw)
    if overrides:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    validate(cfg, source)
    return cfg


def _text(value, what: str, source: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{source}: {what} must be text, not {value!r}")
    return str(value)


#: what a head's file names are made of (a training run writes {base}-{rev}.safetensors and friends under --out)
NAME_FORBIDDEN = ("/", "\\", ":", "\0", "..")
#: the longest {base}-{rev}: its longest file name, {name}.checkpoint.safetensors.tmp, stays under 255 bytes
NAME_BYTES = 200


def name_part(value, what: str, source: str = "config") -> str:
    """`value` as a part of a file name under --out: no folder separators, no `..`, nothing absolute."""
    text = _text(value, what, source).strip()
    if not text or any(c in text for c in NAME_FORBIDDEN) or not text.isprintable() or text.startswith("."):
        raise ConfigError(f"{source}: {what} {text!r} must be a plain name (letters, digits, '-', '_', '.'; no "
                          "folders, no '..', not starting with '.'): the head is written as --out/BASE-REV."
                          "safetensors; choose the folder with --out")
    if len(text.encode("utf-8")) > NAME_BYTES:
        raise ConfigError(f"{source}: {what} is too long ({len(text.encode('utf-8'))} bytes); keep model.base "
                          f"and model.rev under {NAME_BYTES} bytes together")
    return text


def validate(cfg: TrainConfig, source: str = "config") -> None:
    """The same checks for a TrainConfig made in code as for one read from YAML, and those across keys."""
    for section, rules in NUMBERS.items():
        for key, rule in rules.items():
            if getattr(cfg, key) is not None:
                rule.check(getattr(cfg, key), f"{source}: {section}.{key}")
    for key in ("cosine", "random_crops"):
        check_flag(getattr(cfg, key), f"{source}: {key}")
    name_part(cfg.base, "model.base", source)
    name_part(cfg.rev, "model.rev", source)
    if cfg.batch > cfg.steps:
        raise ConfigError(f"{source}: train.batch ({cfg.batch}) is larger than train.steps ({cfg.steps}); "
                          "steps count samples, as in the reference")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError(f"{source}: train.val_fraction must be in [0, 1)")
    if cfg.warmup is not None and not 0 <= cfg.warmup < cfg.steps:
        raise ConfigError(f"{source}: train.warmup ({cfg.warmup}) must be below train.steps ({cfg.steps})")
    cfg.kind.check_train_config(cfg, source)
