"""The one CLIP resolver: what a user names -> a loaded CLIP encoder.

Every entry point (the CLI, `load_encoder`, `TransformersClipEncoder.load`, the
Loader node, training, review, the pixiv commands, the Ray workers) goes
through here, so a CLIP means the same everywhere:

* `auto` + a head: the CLIP the head records (trained with), else its catalogue
  pairing, else ViT-L/14-336 (`clip_source_for`);
* a hub id (`owner/name`): the converted `.bin` folder or the safetensors
  snapshot (hub.py; downloaded only when allowed and HF_HUB_OFFLINE is unset);
* a folder, or a name found in the CLIP folders searched (`clip_search_dirs`);
* a recorded CLIP: a hub id stays a hub id; a folder is found by its name in the
  folders searched and accepted only when its weights' fingerprint matches.

Loaded encoders live in one cache, keyed by (folder, device, dtype): the last
`MAX_PINNED` loaded by the library stay loaded; encoders a host manages (the
ComfyUI nodes) stay while the host holds them. Heads that share a CLIP share one
encoder object, and so one CLIP pass.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from ..errors import CityClfError, WeightsError
from ..scoring.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipVisionEncoder, Encoder, pick_device, pick_dtype
from . import hub
from .catalogue import VIT_L14_336, default_models_dir, paired_clip
from .clip_folder import check_clip_folder, quiet_transformers
from .clip_records import ClipRecord, recorded_clip
from .fingerprints import clip_fingerprint, clip_identities, model_fingerprint
from .weights import describe_non_safetensors

CLIP_DIRS_ENV = "CITYCLF_CLIP_DIRS"
MAX_PINNED = 2


class TransformersClipEncoder(ClipVisionEncoder):
    """A transformers CLIP vision model with projection, loaded from a folder or a hub id."""

    def __init__(self, model, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, name: str = "clip",
                 dtype: torch.dtype | None = None, source: str | None = None, identity: str | None = None):
        super().__init__(model, identity or model_fingerprint(model), mean=mean, std=std, name=name, dtype=dtype,
                         source=source)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "auto",
        allow_download: bool = False,
        download_dir: str | os.PathLike | None = None,
    ) -> "TransformersClipEncoder":
        """From a local folder (config.json + safetensors) or a hub id: `load_encoder`.

        A hub id is looked up in `download_dir` (when given) and the Hugging Face
        cache; it is downloaded only with `allow_download`.
        """
        return load_encoder(source, device, dtype, allow_download=allow_download, download_dir=download_dir)

    @classmethod
    def from_folder(cls, folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                    source: str | None = None) -> "TransformersClipEncoder":
        """The CLIP in `folder` (checked first), on `device` in `dtype`; bad files are a WeightsError naming it."""
        try:
            return cls._read(Path(folder), name, device, dtype, source)
        except CityClfError:
            raise
        except _weights_errors() as e:
            raise WeightsError(
                f"CLIP folder {folder} could not be loaded ({type(e).__name__}: {e}). Its config.json or "
                "model.safetensors is damaged or not a CLIP vision model's: download it again, or name another "
                "CLIP with --clip.") from None

    @classmethod
    def _read(cls, folder: Path, name: str, device, dtype, source) -> "TransformersClipEncoder":
        from transformers import CLIPVisionModelWithProjection  # at first use: transformers is slow to import

        check_clip_folder(folder)
        identity = clip_fingerprint(folder)  # every weight file hashed (remembered while the files are unchanged)
        attempts = ({"attn_implementation": "sdpa"}, {})  # older transformers lack SDPA for CLIP
        for extra in attempts:
            try:
                with quiet_transformers():
                    model = CLIPVisionModelWithProjection.from_pretrained(str(folder), use_safetensors=True, **extra)
                break
            except (TypeError, ValueError) as e:
                if extra and ("sdpa" in str(e).lower() or "attn_implementation" in str(e)):
                    continue
                raise WeightsError(f"CLIP folder {folder} could not be loaded: {e}") from None
            except (OSError, RuntimeError) as e:
                raise WeightsError(f"CLIP folder {folder} could not be loaded: {e}") from None
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        proc = folder / "preprocessor_config.json"
        if proc.is_file():
            try:
                p = json.loads(proc.read_text(encoding="utf-8"))
                mean = tuple(p.get("image_mean", mean))
                std = tuple(p.get("image_std", std))
            except (ValueError, OSError):
                pass
        enc = cls(model, mean=mean, std=std, name=name, source=source, identity=identity)
        return enc.to(device=device, dtype=dtype)


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


# ---------------------------------------------------------------- where CLIPs are looked for


def clip_search_dirs(head=None, clip_dirs=(), models_dirs=()) -> list[Path]:
    """The folders a CLIP named by a name is looked for in, in order: beside the head file, `clip_dirs`
    (--clip-dir), $CITYCLF_CLIP_DIRS, the ComfyUI-style CLIP folders of each models folder and of the head's
    folder (`<models>/clip`, i.e. models/cityclassifiers/clip, and models/clip_vision beside it), cityclf's
    cache."""
    dirs: list[Path] = []
    beside = Path(head.path).resolve().parent if head is not None and getattr(head, "path", None) else None
    if beside is not None:
        dirs.append(beside)
    dirs += [Path(d).expanduser() for d in clip_dirs]
    dirs += [Path(d).expanduser() for d in os.environ.get(CLIP_DIRS_ENV, "").split(os.pathsep) if d]
    for m in (*models_dirs, *([beside] if beside is not None else []), default_models_dir()):
        m = Path(m).expanduser()
        dirs += [m / "clip", m.parent / "clip_vision"]
    dirs.append(hub.cache_dir())
    seen, out = set(), []
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _is_clip_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def locate_clip(
    source: str | os.PathLike, allow_download: bool = False, download_dir: str | os.PathLike | None = None,
    search_dirs=(),
) -> tuple[Path, str]:
    """A local folder for `source` (a folder, a hub id found or fetched, a name in `search_dirs`) and a name."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, path.name
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(1024)
        problem = describe_non_safetensors(path, head, path.stat().st_size)
        raise WeightsError(
            problem or f"{path} is a single file; a transformers CLIP is a folder with config.json and "
            "model.safetensors (in ComfyUI, load single-file CLIP vision models with Load CLIP Vision instead)"
        )
    if not path.is_absolute():
        for d in search_dirs:
            if _is_clip_folder(Path(d) / text):
                return Path(d) / text, Path(text).name
    if not hub.is_hub_id(text):
        where = f" (looked in {', '.join(str(d) for d in search_dirs)})" if search_dirs else ""
        raise WeightsError(f"CLIP {text!r} is neither a folder nor a hub id like openai/clip-vit-large-patch14-336"
                           f"{where}")
    name = text.split("/")[-1]
    converted = hub.bin_only_folder(text, allow_download=allow_download)
    if converted is not None:
        return converted, name
    return hub.snapshot(text, allow_download=allow_download, download_dir=download_dir), name


def source_name(source: str | os.PathLike) -> str:
    """How a CLIP source is recorded in a store: a folder's absolute path, or the hub id."""
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else str(source)


def clip_identity(source: str) -> str | None:
    """The identity of the CLIP at `source` (a folder, or a hub id already on disk), without loading it."""
    try:
        folder, _ = locate_clip(source, allow_download=False)
        return clip_fingerprint(folder)
    except (CityClfError, *_weights_errors()):  # a damaged folder: loading it says what is wrong
        return None


# ---------------------------------------------------------------- the CLIP a head runs on


def clip_source_for(head, clip: str | os.PathLike | None = None, pairing: str = "best",
                    search_dirs=None) -> str:
    """The CLIP a head runs on: the user's choice, else the one it records (trained with, see
    `find_recorded_clip`), else its catalogue pairing, else its kind's (ViT-L/14 for LAION and waifu-scorer
    heads), else ViT-L/14-336."""
    if clip:
        return str(clip)
    rec = recorded_clip(head)
    if rec is not None:
        return find_recorded_clip(head, rec, clip_search_dirs(head) if search_dirs is None else search_dirs)
    paired = paired_clip(head, pairing)
    return paired.repo_id if paired else head.kind.clip or VIT_L14_336.repo_id


def find_recorded_clip(head, rec: ClipRecord, search_dirs: list[Path]) -> str:
    """Where the CLIP `head` records is on this machine: its hub id, or a folder whose fingerprint matches --
    where it was trained, else one of its name in `search_dirs`, in order.

    A record from an earlier version names a folder by its path: used as it is while it is there (as those
    versions did), else looked for by its last part like a folder record.
    """
    where_trained = Path(rec.source).expanduser()
    if rec.folder is None and (hub.is_hub_id(rec.source) or _is_clip_folder(where_trained) or rec.identity is None):
        return rec.source
    name = rec.folder or where_trained.name
    for folder in (where_trained, *(Path(d) / name for d in search_dirs)):
        if _is_clip_folder(folder) and rec.identity in _identities_or_none(folder):
            return str(folder)
    searched = "\n  ".join(str(d) for d in search_dirs)
    raise WeightsError(
        f"head {head.name} was trained with the CLIP {name!r} (fingerprint {rec.identity}), and no folder of that "
        f"name with those weights was found. Looked in:\n  {searched}\nPut the CLIP folder beside the head file, "
        f"in a folder given with --clip-dir or ${CLIP_DIRS_ENV}, or in models/cityclassifiers/clip; or name it "
        "with --clip (the loader node: clip).")


def _identities_or_none(folder: Path) -> tuple:
    """The folder's identity and the one earlier versions gave it (heads they trained record that); () if
    the folder cannot be read."""
    try:
        return clip_identities(folder)
    except (CityClfError, *_weights_errors()):
        return ()


# ---------------------------------------------------------------- the one encoder cache


_CACHE: "weakref.WeakValueDictionary[tuple, Encoder]" = weakref.WeakValueDictionary()
_PINNED: "deque[Encoder]" = deque(maxlen=MAX_PINNED)
_CACHE_LOCK = threading.Lock()


def cached_encoder(key: tuple, build: Callable[[], Encoder], pin: bool = True) -> Encoder:
    """The encoder cached under `key`, else `build()` cached there. Pinned encoders (the last MAX_PINNED the
    library loaded) stay loaded; others live while their holder (a ComfyUI node's model) keeps them."""
    with _CACHE_LOCK:
        encoder = _CACHE.get(key)
    if encoder is None:
        encoder = build()
        with _CACHE_LOCK:
            encoder = _CACHE.setdefault(key, encoder)
    if pin:
        with _CACHE_LOCK:
            if encoder in _PINNED:
                _PINNED.remove(encoder)
            _PINNED.append(encoder)
    return encoder


def forget_encoders() -> None:
    """Drop every cached encoder (each is freed once nothing else holds it)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _PINNED.clear()


def load_encoder(
    source: str | os.PathLike,
    device: str | None = "auto",
    dtype: str | None = "auto",
    allow_download: bool = False,
    download_dir: str | os.PathLike | None = None,
    search_dirs=(),
) -> TransformersClipEncoder:
    """A transformers CLIP encoder for `source` (see `locate_clip`), loaded once per (folder, device, dtype)."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    folder, name = locate_clip(source, allow_download=allow_download, download_dir=download_dir,
                               search_dirs=search_dirs)
    key = (os.path.realpath(folder), str(dev), str(dt))
    recorded = str(source) if hub.is_hub_id(str(source)) else source_name(folder)
    return cached_encoder(key, lambda: TransformersClipEncoder.from_folder(Path(folder), name, dev, dt, recorded))


__all__ = ["CLIP_DIRS_ENV", "TransformersClipEncoder", "cached_encoder", "clip_identity", "clip_search_dirs",
           "clip_source_for", "find_recorded_clip", "forget_encoders", "load_encoder", "locate_clip", "source_name"]
