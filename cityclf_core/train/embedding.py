"""A training run's images as embeddings: the CLIP it embeds them with (loaded, and recorded in the config so
the trained head names it), and the images embedded once through an embedding store under its writer lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, interrupted_hint
from ..loading.clip_records import record_for
from ..loading.clips import load_encoder, source_name
from ..store.lock import store_writer
from .config import REFERENCE_CLIPS, TrainConfig
from .data import Dataset, inference_policy, load_image_dataset


def training_clip(cfg: TrainConfig, clip: str | os.PathLike | None = None) -> str:
    """The CLIP to embed `cfg`'s images with: `clip` (--clip), else model.clip_model, else model.clip's
    reference CLIP; a ConfigError when there is none (META: .npy embeddings only)."""
    source = clip or cfg.clip_model or REFERENCE_CLIPS[cfg.clip]["clip_model"]
    if source is None:
        raise ConfigError(f"model.clip {cfg.clip} has no CLIP to embed images with here; give --clip, "
                          "set model.clip_model, or train from ..npy embeddings")
    return str(source)


def load_training_clip(cfg: TrainConfig, source: str | os.PathLike, device: str | None = "auto",
                       dtype: str | None = "auto", allow_download: bool = False):
    """The CLIP at `source` (see `training_clip`), loaded; `cfg.clip_record` then says which it is and how the
    head will see images, for the head's config sidecar."""
    encoder = load_encoder(source, device, dtype, allow_download=allow_download)
    cfg.clip_record = record_for(encoder, source_name(source), inference_policy(cfg, encoder.image_size)).to_dict()
    return encoder


@dataclass
class EmbeddedData:
    data: Dataset
    store: Path
    embedded: int  # images embedded now
    reused: int  # images the store already had


def default_store(cfg: TrainConfig, out: str | os.PathLike) -> Path:
    """Where a run keeps its embeddings unless told: OUT/<base>.embeddings.db."""
    return Path(out) / f"{cfg.base}.embeddings.db"


def embed_training_images(cfg: TrainConfig, root: str | os.PathLike, encoder, out: str | os.PathLike,
                          store: str | os.PathLike | None = None,
                          on_total: Callable[[int], None] | None = None,
                          on_file: Callable[[str, str | None], None] | None = None) -> EmbeddedData:
    """The category folders in `root` embedded with `encoder` through the store (`store`, default
    `default_store`; OUT is made), each image once, holding the store's writer lock; then the training and
    validation views (train.data.load_image_dataset, which says what `on_total` and `on_file` are told).

    Interrupted, the store keeps the embeddings made so far, and the error says so: a rerun continues.
    """
    from ..store import EmbeddingStore  # the SQLite backend: loaded only when images are embedded

    store_path = Path(store) if store else default_store(cfg, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    reports: list = []
    with EmbeddingStore(store_path) as opened, store_writer(opened.path):  # one writer per store
        with interrupted_hint(f"{store_path} keeps the embeddings made so far: rerun to continue"):
            data = load_image_dataset(cfg, Path(root), opened, encoder, report=reports, on_total=on_total,
                                      on_file=on_file)
    return EmbeddedData(data, store_path, sum(r.embedded for r in reports), sum(r.reused for r in reports))


__all__ = ["EmbeddedData", "default_store", "embed_training_images", "load_training_clip", "training_clip"]
