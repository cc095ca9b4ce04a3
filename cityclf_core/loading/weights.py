"""Reading weight files safely: safetensors only, with a clear word for everything else.

Users download head files by hand, and the usual accidents are a saved web page
instead of the file, a Git LFS pointer from a clone without LFS, or a PyTorch
pickle. Each gets an error that says what the file really is and what to do.
Pickles are never opened: unpickling can run arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WeightsError

if TYPE_CHECKING:  # safetensors.torch brings torch when weights are read: checks and checksums need none
    import torch

_SNIFF_BYTES = 1024
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def describe_non_safetensors(path: Path, head: bytes, size: int) -> str | None:
    """Say what a file is when it is clearly not safetensors, else None."""
    stripped = head.lstrip()
    lowered = stripped[:512].lower()
    if stripped.startswith(b"version https://git-lfs.github.com/spec"):
        return (
            f"{path} is a Git LFS pointer ({size} bytes), not the weights. "
            "Run `git lfs pull` in the repository you cloned, or download the file itself."
        )
    if lowered.startswith(b"<!doctype html") or lowered.startswith(b"<html") or b"<html" in lowered:
        return (
            f"{path} is a saved web page (HTML), not weights. Download the file itself "
            "(on Hugging Face: the 'download' link, a URL with /resolve/, not /blob/)."
        )
    if head[:4] == b"PK\x03\x04":
        return (
            f"{path} is a zip archive (the PyTorch .pt/.ckpt/.bin format). Only .safetensors "
            "files are loaded, because pickled weights can run code; use the .safetensors "
            "release or convert it with safetensors.torch.save_file."
        )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (
            f"{path} is a Python pickle. Only .safetensors files are loaded, because pickles "
            "can run code; use the .safetensors release or convert it."
        )
    if stripped.startswith(b"{") or stripped.startswith(b"["):
        return f"{path} is a JSON/text file, not weights (a config sidecar is named <stem>.config.json)."
    return None


def check_safetensors_file(path: str | os.PathLike, what: str = "weights") -> Path:
    """Raise WeightsError unless `path` looks like a readable safetensors file."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{what} file not found: {path}")
    if path.is_dir():
        raise WeightsError(f"{what} path {path} is a folder; expected a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise WeightsError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    problem = describe_non_safetensors(path, head, size)
    if problem:
        raise WeightsError(problem)
    if size < 10:
        raise WeightsError(f"{path} is {size} bytes: too small to be a safetensors file (truncated download?)")
    n = int.from_bytes(head[:8], "little")
    if n < 2 or n > _MAX_HEADER or 8 + n > size or head[8:9] != b"{":
        raise WeightsError(
            f"{path} is not a safetensors file (its header is invalid); it may be truncated or "
            "in another format. Download it again."
        )
    return path


def read_safetensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU, with clear errors."""
    path = check_safetensors_file(path, what)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{path} could not be read as safetensors ({e}); it may be truncated or corrupt. "
            "Download it again."
        ) from None


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from `path`, or a WeightsError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise WeightsError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{what} {path} is not valid JSON ({e}); fix or delete it") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} {path} must hold a JSON object, found {type(data).__name__}")
    return data


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (real path, size, mtime) so each file is hashed once."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest
