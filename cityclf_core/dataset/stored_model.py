"""Heads bound to the CLIPs an embedding store records, for scoring stored embeddings with no CLIP loaded."""

from __future__ import annotations

import os

from pathlib import Path

from ..errors import StoreError
from ..loading.catalogue import default_models_dir, resolve_head
from ..loading.clip_records import check_clip, recorded_clip
from ..loading.clips import clip_identity, clip_source_for, source_name
from ..notices import note
from ..numbers import with_tile_size
from ..scoring.heads import Head, default_policy
from ..scoring.pipeline import ScoringModel
from ..store.stored_encoder import StoredEncoder


def load_stored_model(
    models: list[str | os.PathLike],
    store,
    clip: str | os.PathLike | None = None,
    pairing: str = "best",
    allow_download: bool = True,
    models_dir: str | os.PathLike | None = None,
    search_dirs: list[str | os.PathLike] = (),
    tile_size: int | None = None,
) -> ScoringModel:
    """Heads bound to the CLIPs recorded in `store`, for scoring stored embeddings with no CLIP loaded.

    Each head's CLIP is found by identity (fingerprinted from its files when they
    are on this machine) or else by the source it was recorded from.
    """
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    model = ScoringModel()
    encoders: dict[int, StoredEncoder] = {}
    for name in models:
        head = resolve_head(name, search_dirs=[*search_dirs, models_dir], download_dir=models_dir,
                            allow_download=allow_download)
        row = stored_clip_for(head, store, clip, pairing)
        encoder = encoders.setdefault(row.id, StoredEncoder(row))
        check_clip(head, encoder)
        policy = default_policy(head, encoder.image_size, pairing)
        policy = with_tile_size(policy, tile_size, encoder.image_size)
        model.add(head, encoder, policy)
    return model


def stored_clip_for(head: Head, store, clip: str | os.PathLike | None = None, pairing: str = "best"):
    """The store's CLIP (its row) that `head` runs on: `clip` if given, else the CLIP the head records, else
    its catalogue pairing or its kind's, else -- for a head that names no CLIP -- the store's only CLIP of the
    head's size."""
    if clip:
        return store.find_encoder(clip_identity(str(clip)), source_name(clip))
    rec = recorded_clip(head)
    if rec is not None:
        return store.find_encoder(rec.identity or clip_identity(rec.source), source_name(rec.source))
    if head.release is not None or head.kind.clip:
        source = clip_source_for(head, None, pairing)
        return store.find_encoder(clip_identity(source), source_name(source))
    fits = [e for e in store.encoders() if e.embed_dim == head.features]
    if len(fits) == 1:
        note(f"head {head.name} does not name its CLIP; using the store's only {head.features}-d CLIP, "
             f"{fits[0].source}")
        return fits[0]
    held = "; ".join(f"{e.source} ({e.embed_dim}-d)" for e in store.encoders()) or "none"
    if fits:
        raise StoreError(f"head {head.name} does not name the CLIP it was made for, and store {store.path} holds "
                         f"several that fit it ({held}); choose one with --clip")
    raise StoreError(f"store {store.path} holds no embeddings of a {head.features}-d CLIP for head {head.name} "
                     f"(it holds: {held}); embed with its CLIP first: cityclf embed PATH... --store {store.path} "
                     f"--model {head.name} --clip YOUR_CLIP")


__all__ = ["load_stored_model", "stored_clip_for"]
