"""Assembling a ScoringModel from what a user names: heads, and the CLIP to run them on.

Encoders are cached per (folder, device, dtype) for the life of the process, so
a long-running host (ComfyUI, a notebook) loads each CLIP once however many
times it builds a model, and heads that share a CLIP share one encoder object --
and so one CLIP pass.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from .catalogue import VIT_L14_336, default_models_dir, default_policy, paired_clip, resolve_head
from .encoders import Encoder, TransformersClipEncoder, locate_clip, pick_device, pick_dtype
from .clip_record import check_clip, recorded_clip
from .errors import CityClfError, StoreError, WeightsError
from .heads import Head
from .fingerprints import remembered_fingerprint
from .hub import is_hub_id, local_clip
from .pipeline import ScoringModel
from .store import StoredEncoder

_ENCODERS: "OrderedDict[tuple, Encoder]" = OrderedDict()
_ENCODERS_LOCK = threading.Lock()
MAX_CACHED_ENCODERS = 2


def clip_source_for(head: Head, clip: str | None, pairing: str = "best") -> str:
    """The CLIP a head runs on: the user's choice, else the one it records (trained with), else its
    catalogue pairing, else its kind's (ViT-L/14 for LAION and waifu-scorer heads), else ViT-L/14-336."""
    if clip:
        return str(clip)
    rec = recorded_clip(head)
    if rec is not None:
        if Path(rec.source).is_absolute() and not Path(rec.source).exists():
            raise WeightsError(f"head {head.name} was trained with the CLIP in {rec.source}, which is not there "
                               "any more; give the CLIP it was trained with (--clip, or the loader's clip)")
        return rec.source
    paired = paired_clip(head, pairing)
    return paired.repo_id if paired else head.kind.clip or VIT_L14_336.repo_id


def load_encoder(
    source: str | os.PathLike,
    device: str | None = "auto",
    dtype: str | None = "auto",
    allow_download: bool = False,
    download_dir: str | os.PathLike | None = None,
) -> TransformersClipEncoder:
    """A transformers CLIP encoder, loaded once per (folder, device, dtype) and then reused."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    folder, name = locate_clip(local_clip(source, allow_download), allow_download=allow_download,
                               download_dir=download_dir)
    if is_hub_id(str(source)):
        name = str(source).split("/")[-1]
    key = (os.path.realpath(folder), str(dev), str(dt))
    with _ENCODERS_LOCK:
        if key in _ENCODERS:
            _ENCODERS.move_to_end(key)
            return _ENCODERS[key]
    encoder = _load_clip_folder(Path(folder), name, dev, dt, source_name(source))
    with _ENCODERS_LOCK:
        _ENCODERS[key] = encoder
        while len(_ENCODERS) > MAX_CACHED_ENCODERS:
            _ENCODERS.popitem(last=False)
    return encoder


def _weights_errors() -> tuple[type[BaseException], ...]:
    """What loading a CLIP folder raises for bad files: wrong config types, truncated or bad safetensors."""
    errors: list[type[BaseException]] = [OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors.append(StrictDataclassError)
    except ImportError:  # pragma: no cover - older huggingface_hub validates no config types
        pass
    return tuple(errors)


def _load_clip_folder(folder: Path, name: str, device, dtype, source: str) -> TransformersClipEncoder:
    """TransformersClipEncoder.from_folder, with bad files (not bugs) reported as a WeightsError naming the folder."""
    try:
        return TransformersClipEncoder.from_folder(folder, name=name, device=device, dtype=dtype, source=source)
    except CityClfError:
        raise
    except _weights_errors() as e:
        raise WeightsError(
            f"CLIP folder {folder} could not be loaded ({type(e).__name__}: {e}). Its config.json or "
            "model.safetensors is damaged or not a CLIP vision model's: download it again, or name another CLIP "
            "with --clip.") from None


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
) -> ScoringModel:
    """Heads by file or catalogue name, each on `clip` or on the CLIP it is paired with.

    Catalogue heads missing locally are downloaded into `models_dir` (with
    `allow_download`); CLIPs named by hub id likewise, into the Hugging Face cache
    or `clip_download_dir`.
    """
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    dirs = [*search_dirs, models_dir]
    model = ScoringModel()
    for name in models:
        head = resolve_head(name, search_dirs=dirs, download_dir=models_dir, allow_download=allow_download)
        encoder = load_encoder(clip_source_for(head, clip, pairing), device, dtype,
                               allow_download=allow_download, download_dir=clip_download_dir)
        check_clip(head, encoder)
        policy = default_policy(head, encoder.image_size, pairing)
        if tile_size and policy.tiling:
            policy = replace(policy, tile_size=tile_size)
        model.add(head, encoder, policy)
    return model


def clip_identity(source: str) -> str | None:
    """The identity of the CLIP at `source` (a folder, or a hub id already on disk), without loading it."""
    from .encoders import folder_fingerprint

    try:
        folder, _ = locate_clip(local_clip(source), allow_download=False)
        return remembered_fingerprint(folder, folder_fingerprint)
    except (CityClfError, *_weights_errors()):  # a damaged folder: loading it says what is wrong
        return None


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
        if tile_size and policy.tiling:
            policy = replace(policy, tile_size=tile_size)
        model.add(head, encoder, policy)
    return model


def stored_clip_for(head: Head, store, clip: str | os.PathLike | None = None, pairing: str = "best"):
    """The store's CLIP (its row) that `head` runs on: `clip` if given, else the CLIP the head records, else
    its catalogue pairing or its kind's, else -- for a head that names no CLIP -- the store's only CLIP of the
    head's size."""
    from .notices import note

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


def source_name(source: str | os.PathLike) -> str:
    """How a CLIP source is recorded in a store: a folder's absolute path, or the hub id."""
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else str(source)


__all__ = ["clip_identity", "clip_source_for", "load_encoder", "load_scoring_model",
           "load_stored_model", "source_name", "stored_clip_for"]
