"""A CLIP's identity: one fingerprint of all its weights, the same wherever its files are.

`folder_fingerprint` hashes the files a CLIP folder loads from: config.json,
preprocessor_config.json (its mean and std change the embeddings) and every
*.safetensors file in name order, read in blocks (SHA-256), so two CLIPs that
differ in any weight have different identities. `clip_fingerprint` remembers a
folder's fingerprint by its files' names, sizes and mtimes (in `$CITYCLF_CACHE`,
default ~/.cache/cityclf, fingerprints.json): any change to a file's size or
mtime, or a file added or removed, hashes it again. The embedding store, trained
heads' CLIP records and Ray workers all use it (an encoder loaded from a folder
carries its folder's fingerprint).

`legacy_fingerprint` is the identity earlier versions gave a folder (its config
and three tensors); it is kept only so that stores and heads made by them are
still recognised: `former_identity` and `later_identities` pair the two for the
folders fingerprinted on this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..scoring.encoders import weights_fingerprint
from .clip_folder import check_clip_folder, quiet_transformers

WEIGHT_SUFFIXES = (".safetensors", ".json")
SCHEME = "files-sha256"  # what a remembered entry's fingerprint is; entries of other schemes are computed again
CONFIG_FILES = ("config.json", "preprocessor_config.json")
BLOCK = 8 << 20  # bytes read at a time


def cache_file() -> Path:
    return Path(os.environ.get("CITYCLF_CACHE") or "~/.cache/cityclf").expanduser() / "fingerprints.json"


def signature(folder: Path) -> list:
    """(name, size, mtime_ns) of the files that make a CLIP folder, sorted."""
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def hashed_files(folder: Path) -> list[Path]:
    """The files a folder's fingerprint covers, in the order they are hashed."""
    configs = [folder / n for n in CONFIG_FILES if (folder / n).is_file()]
    return configs + sorted(folder.glob("*.safetensors"))


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """The identity of the CLIP in `folder`: a SHA-256 of its config and every weight file, read in blocks."""
    folder = Path(folder)
    check_clip_folder(folder)
    h = hashlib.sha256(SCHEME.encode())
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for path in hashed_files(folder):
        h.update(b"\0" + path.name.encode() + b"\0")
        read = 0
        with open(path, "rb") as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                read += n
        h.update(str(read).encode())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """The identity of a transformers CLIP vision model held in memory and not loaded from a folder (a folder's
    CLIP carries `clip_fingerprint` of its folder): a hash of its shape config and every tensor of its state."""
    h = hashlib.sha256(b"state-dict")
    h.update(json.dumps(_shape_config(model.config), sort_keys=True).encode())
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- remembered, with the former identity


_PAIRS: dict[str, str | None] = {}  # fingerprint -> legacy fingerprint, of folders fingerprinted by this process


def _read_cache() -> dict:
    try:
        known = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remembered(folder: str | os.PathLike) -> dict:
    """{"fingerprint", "legacy"} of `folder`, from the cache while its files are unchanged, else computed."""
    folder = Path(folder).resolve()
    sig = signature(folder)
    known = _read_cache()
    entry = known.get(str(folder))
    if (isinstance(entry, dict) and entry.get("scheme") == SCHEME and entry.get("files") == sig
            and isinstance(entry.get("fingerprint"), str)):
        _PAIRS[entry["fingerprint"]] = entry.get("legacy")
        return entry
    fingerprint = folder_fingerprint(folder)
    try:
        legacy = legacy_fingerprint(folder)
    except Exception:  # noqa: BLE001 - the former identity is a courtesy to old stores; the new one stands alone
        legacy = None
    entry = {"scheme": SCHEME, "files": sig, "fingerprint": fingerprint, "legacy": legacy}
    _PAIRS[fingerprint] = legacy
    known[str(folder)] = entry
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compute next time too
    return entry


def clip_fingerprint(folder: str | os.PathLike) -> str:
    """`folder_fingerprint`, remembered while the folder's files are unchanged."""
    return _remembered(folder)["fingerprint"]


def clip_identities(folder: str | os.PathLike) -> tuple[str, str | None]:
    """(fingerprint, legacy fingerprint) of `folder`, remembered alike: a record made by an earlier version
    names the CLIP by the second."""
    entry = _remembered(folder)
    return entry["fingerprint"], entry.get("legacy")


def _pairs() -> list[tuple[str, str]]:
    out = [(new, old) for new, old in _PAIRS.items() if old]
    for entry in _read_cache().values():
        if isinstance(entry, dict) and entry.get("scheme") == SCHEME and entry.get("legacy"):
            out.append((entry.get("fingerprint"), entry["legacy"]))
    return out


def former_identity(identity: str) -> str | None:
    """The identity an earlier version gave the CLIP with this identity, where this machine fingerprinted it."""
    if _PAIRS.get(identity):
        return _PAIRS[identity]
    return next((old for new, old in _pairs() if new == identity), None)


def later_identities(identity: str) -> set[str]:
    """The identities of the CLIP folders (fingerprinted on this machine) that an earlier version named `identity`."""
    return {new for new, old in _pairs() if old == identity}


# ---------------------------------------------------------------- the identity of earlier versions


LEGACY_KEYS = ("visual_projection.weight", "vision_model.embeddings.class_embedding",
               "vision_model.post_layernorm.weight")
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "projection_dim", "hidden_act")


def _shape_config(cfg) -> dict:
    return {k: getattr(cfg, k, None) for k in _SHAPE_FIELDS}


def legacy_fingerprint(folder: str | os.PathLike) -> str:
    """The identity earlier versions gave the CLIP in `folder` (its shape config and three tensors; blind to
    every other weight). Only for recognising stores and heads they made."""
    from safetensors import safe_open
    from transformers import CLIPVisionConfig

    folder = Path(folder)
    check_clip_folder(folder)
    with quiet_transformers():
        cfg = CLIPVisionConfig.from_pretrained(str(folder))
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
            for k in LEGACY_KEYS:
                if k in keys:
                    tensors[k] = f.get_tensor(k)
    return weights_fingerprint(tensors, _shape_config(cfg))


__all__ = ["clip_fingerprint", "clip_identities", "folder_fingerprint", "former_identity", "hashed_files",
           "later_identities", "legacy_fingerprint", "model_fingerprint", "signature"]
