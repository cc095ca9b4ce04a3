"""Assembling a ScoringModel from what a user names: heads, and the CLIP to run them on (clips.py)."""

from __future__ import annotations

import os

from pathlib import Path

from ..numbers import with_tile_size
from ..scoring.heads import default_policy
from ..scoring.pipeline import ScoringModel
from .catalogue import default_models_dir, resolve_head
from .clip_records import check_clip
from .clips import clip_search_dirs, clip_source_for, load_encoder


def load_scoring_model(
    models: list[str | os.PathLike],
    clip: str | os.PathLike | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    pairing: str = "best",
    allow_download: bool = True,
    models_dir: str | os.PathLike | None = None,
    search_dirs: list[str | os.PathLike] = (),
    clip_download_dir: str | os.PathLike | None = None,
    tile_size: int | None = None,
    clip_dirs: list[str | os.PathLike] = (),
) -> ScoringModel:
    """Heads by file or catalogue name, each on `clip` or on the CLIP it is paired with.

    Catalogue heads missing locally are downloaded into `models_dir` (with
    `allow_download`); CLIPs named by hub id likewise, into the Hugging Face cache
    or `clip_download_dir`. CLIPs named by a folder's name, and folders heads
    record, are looked for in `clip_dirs` among others (see clips.clip_search_dirs).
    """
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    dirs = [*search_dirs, models_dir]
    model = ScoringModel()
    for name in models:
        head = resolve_head(name, search_dirs=dirs, download_dir=models_dir, allow_download=allow_download)
        search = clip_search_dirs(head, clip_dirs, [models_dir])
        encoder = load_encoder(clip_source_for(head, clip, pairing, search), device, dtype,
                               allow_download=allow_download, download_dir=clip_download_dir, search_dirs=search)
        check_clip(head, encoder)
        policy = default_policy(head, encoder.image_size, pairing)
        policy = with_tile_size(policy, tile_size, encoder.image_size)
        model.add(head, encoder, policy)
    return model


__all__ = ["load_scoring_model"]
