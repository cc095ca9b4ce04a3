"""Training popularity heads with the Trainer of cityclf_core.train, on embeddings from the store.

    load_data      records (metadata) + which stored embedding each has
    fit_and_train  fit the target on the split's TRAINING part, build the Dataset, run the Trainer; the head's
                   sidecar names its kind, outputs, target with scalers, split and CLIP
    predict        a saved head (loaded as `cityclf score` loads it) on stored embeddings, in chunks
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..kinds.popularity_nets import OUTPUT_NAMES
from ..loading.clip_records import record_for
from ..loading.clips import clip_identity, source_name
from ..scoring.crops import WHOLE_IMAGE
from ..store import EmbeddingStore, EncoderRow
from ..kinds.popularity import balance_points
from ..train import Dataset, TrainConfig, Trainer, TrainResult
from ..train.config import validate
from ..train.outputs import write_metrics
from .config import PixivSettings
from .records import Records, load_records
from .rows import StoredViews
from .splits import Split, artists_on_both_sides
from .targets import Target

POLICY = "whole"  # popularity heads look at the whole picture, one view
STREAM_ABOVE = 50_000  # works: stream: auto reads training embeddings per batch above this


@dataclass
class PixivTrainConfig(TrainConfig):
    """A TrainConfig whose sizes come from the store's CLIP and the config, and whose head sidecar has extras."""

    embed_dim: int = 768
    width: int = 256
    uncertainty_lr: float | None = None
    sidecar: dict = field(default_factory=dict)
    pixiv = True  # (not a field) check_train_config of the popularity kinds looks for it

    @property
    def features(self) -> int:
        return self.embed_dim

    @property
    def hidden(self) -> int:
        return self.width

    def head_config(self):
        return dataclasses.replace(super().head_config(), extra=dict(self.sidecar))


@dataclass
class PixivData:
    records: Records
    contents: np.ndarray  # S64: the stored content hash of each record's image
    store: Path
    encoder: EncoderRow
    clip: str
    left_out: list  # (filename, why)


def load_data(settings: PixivSettings, records: Records | None = None) -> PixivData:
    """The ingested works that have stored whole-image embeddings of the settings' CLIP."""
    left_out: list = []
    if records is None:
        records, left_out = load_records(settings.dataset)
    if not settings.store.is_file():
        raise ConfigError(f"embedding store {settings.store} not found; make it with `cityclf embed "
                          f"{settings.dataset} --store {settings.store} --clip {settings.clip}`")
    with EmbeddingStore(settings.store, create=False) as store:
        row = store.find_encoder(clip_identity(settings.clip), source_name(settings.clip))
        known = store.known_contents(row.id, POLICY)
        by_path = {f.path: f.content for f in store.files()}
    contents, keep = [], []
    for i, image in enumerate(records.image):
        content = by_path.get(os.path.abspath(image)) if image else None
        if content in known:
            contents.append(content)
            keep.append(i)
        else:
            left_out.append((records.filename[i], f"no whole-image embedding of CLIP {settings.clip} in "
                                                  f"{settings.store}; run `cityclf embed {settings.dataset} --store "
                                                  f"{settings.store} --clip {settings.clip}`"))
    if len(keep) < 10:
        raise ConfigError(f"only {len(keep)} work(s) of {settings.dataset} have embeddings in {settings.store}; "
                          f"run `cityclf embed {settings.dataset} --store {settings.store} --clip {settings.clip}`")
    return PixivData(records.subset(np.array(keep, dtype=np.int64)), np.array(contents, dtype="S64"),
                     settings.store, row, settings.clip, left_out)


def target_rows(target: Target, rec: Records) -> np.ndarray:
    """[n, 3] float32: popularity score s (clipped to [0, 1]), sanity class 0..2, AI 0/1."""
    s = np.clip(target.score(rec), 0.0, 1.0)
    return np.stack([s, rec.sanity_class, rec.ai.astype(np.float64)], axis=1).astype(np.float32)


def _defined(target: Target, rec: Records, idx: np.ndarray) -> np.ndarray:
    return idx[np.isfinite(target.score(rec.subset(idx)))]


def views_of(data: PixivData, idx: np.ndarray) -> StoredViews:
    return StoredViews(data.store, data.encoder, POLICY, data.contents[idx])


def build_dataset(settings: PixivSettings, data: PixivData, split: Split, target: Target) -> Dataset:
    rec = data.records
    train = _defined(target, rec, split.train)
    val = _defined(target, rec, split.val)
    if len(val) > settings.max_validation:
        val = np.sort(np.random.default_rng(split.seed).choice(val, settings.max_validation, replace=False))
    if len(train) < 2:
        raise ConfigError(f"the {split.name} split leaves {len(train)} training work(s); need more data")
    stream = settings.stream == "yes" or (settings.stream == "auto" and len(train) > STREAM_ABOVE)
    train_views = views_of(data, train)
    if not stream:
        train_views = torch.cat([chunk for _, chunk in train_views.chunks()])
    val_views = views_of(data, val)
    val_tensor = (torch.cat([c for _, c in val_views.chunks()]) if len(val)
                  else torch.zeros((0, data.encoder.embed_dim)))
    return Dataset(train_views, torch.arange(len(train) + 1, dtype=torch.long),
                   torch.from_numpy(target_rows(target, rec.subset(train))), rec.filename[train].tolist(),
                   val_tensor, [1] * len(val), torch.from_numpy(target_rows(target, rec.subset(val))),
                   rec.filename[val].tolist(), {})


def fit_target(settings: PixivSettings, train: Records) -> Target:
    """The settings' target, fitted on these (training) records only."""
    return Target.fit(settings.target, train, alpha=settings.alpha, k=settings.k, beta=settings.beta,
                      gamma=settings.gamma, per_artist=settings.per_artist)


def ids_digest(ids) -> str:
    """sha256 of the sorted artwork ids, comma-separated: what a split's record names."""
    return hashlib.sha256(",".join(str(int(i)) for i in sorted(ids)).encode()).hexdigest()


MAX_LISTED_IDS = 50_000  # the sidecar lists the test works' ids up to this many (always their digest)


def split_record(settings: PixivSettings, data: PixivData, split: Split) -> dict:
    """What makes the split auditable: its rule and seed, sizes, the test works' ids and digests."""
    rec = data.records
    test_ids = sorted(int(i) for i in rec.illust_id[split.test])
    d = {"name": split.name, "seed": split.seed, "test_fraction": settings.test_fraction,
         "val_fraction": settings.val_fraction, "train": int(len(split.train)), "val": int(len(split.val)),
         "test": int(len(split.test)), "train_ids_sha256": ids_digest(rec.illust_id[split.train]),
         "val_ids_sha256": ids_digest(rec.illust_id[split.val]), "test_ids_sha256": ids_digest(test_ids)}
    if len(test_ids) <= MAX_LISTED_IDS:
        d["test_ids"] = test_ids
    return d


def train_config(settings: PixivSettings, data: PixivData, arch: str, n_train: int, split: Split,
                 target: Target, base: str | None = None, loss: str | None = None) -> PixivTrainConfig:
    steps = settings.steps or max(settings.batch, int(round(settings.epochs * n_train)))
    enc = data.encoder
    sidecar = {
        "output_names": list(OUTPUT_NAMES[: 1 if arch == "popularity" else len(OUTPUT_NAMES)]),
        "target": target.to_dict(),
        "clip": {**record_for(enc, data.clip, WHOLE_IMAGE).to_dict(), "name": enc.name, "embed_dim": enc.embed_dim},
        "crop_policy": POLICY,
        "split": split_record(settings, data, split),
        "loss": loss or settings.loss,
        "trained_with": "cityclf pixiv train",
    }
    cfg = PixivTrainConfig(base=base or settings.base, rev=settings.rev, arch=arch, lr=settings.lr, steps=steps,
                           batch=min(settings.batch, n_train), cosine=settings.cosine, val_fraction=0.0,
                           seed=split.seed, warmup=settings.warmup,
                           device=settings.device, early_stopping=settings.early_stopping,
                           eval_every=settings.eval_every, weight_decay=settings.weight_decay,
                           loss=loss or settings.loss, uncertainty_lr=settings.uncertainty_lr,
                           embed_dim=enc.embed_dim, width=settings.width, sidecar=sidecar)
    validate(cfg, settings.source)
    return cfg


def fit_and_train(settings: PixivSettings, data: PixivData, split: Split, arch: str, out: str | os.PathLike,
                  base: str | None = None, overwrite: bool = False, log: Callable[[str], None] = print,
                  progress: Callable[[int, int], None] | None = None, loss: str | None = None
                  ) -> tuple[TrainResult, Target]:
    """Fit the target on `split`'s training works only, then train one head of kind `arch` into `out`.

    After training, the training works' scores give the head its percentiles (`quantiles` in the config
    sidecar: what its label shows), and a multi-task head's log-variances go into its metrics
    (`uncertainty`: each z_t, its balance point from the running task losses, and those losses)."""
    from ..loading.catalogue import load_head

    rec = data.records
    target = fit_target(settings, rec.subset(split.train))
    dataset = build_dataset(settings, data, split, target)
    cfg = train_config(settings, data, arch, dataset.n_train, split, target, base, loss)
    trainer = Trainer(cfg, dataset, out, log=log, progress=progress)
    try:
        result = trainer.train(overwrite=overwrite)
    finally:
        if isinstance(dataset.train_views, StoredViews):
            dataset.train_views.close()
    train_scores = predict(load_head(result.weights), data, _defined(target, rec, split.train))[:, 0]
    _add_to_sidecar(result.config, {"quantiles": [float(q) for q in np.percentile(train_scores, np.arange(101))]})
    net = trainer.net
    if getattr(net, "task_losses", None) is not None:
        result.metrics["uncertainty"] = {"tasks": ["popularity", "sanity", "ai"],
                                         "log_vars": [float(z) for z in net.log_vars.detach().cpu()],
                                         "balance": balance_points(net.task_losses),
                                         "task_losses": [float(v) for v in net.task_losses]}
        write_metrics(result.metrics_path, result.metrics)
    return result, target


def _add_to_sidecar(path: Path, extra: dict) -> None:
    """Add keys to a head's config sidecar (atomically: the old file or the new one)."""
    from ..confined import atomic_write

    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(extra)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def predict(head, data: PixivData, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[len(idx), outputs] values of a loaded head on the stored embeddings of these works (chunked)."""
    views = views_of(data, idx)
    try:
        parts = [head.predict(x).numpy() for _, x in views.chunks(chunk)]
    finally:
        views.close()
    return np.concatenate(parts) if parts else np.zeros((0, head.config.outputs), np.float32)


def describe_split(data: PixivData, split: Split) -> str:
    return (f"{split.name} split (seed {split.seed}): {split.sizes()}, "
            f"{artists_on_both_sides(data.records, split)} artist(s) on both sides"
            + (f", {split.left_out} work(s) left out" if split.left_out else ""))


__all__ = ["PixivData", "PixivTrainConfig", "build_dataset", "describe_split", "fit_and_train", "fit_target",
           "ids_digest", "load_data", "predict", "split_record", "target_rows"]
