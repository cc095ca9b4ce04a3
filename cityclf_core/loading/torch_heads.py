"""Head files in PyTorch's format (.pth, .pt, .bin, .ckpt): LAION's aesthetic predictor and waifu-scorer ship so.

Such a file is read once, only through torch's weights-only loader (`hub.read_bin`:
a file holding code or other objects is refused, nothing in it runs), its keys
freed of wrapper prefixes (torch.compile's `_orig_mod.`, `module.`, a Lightning
module's `model.`; a Lightning checkpoint's `state_dict`), checked against the
known head layouts, and written as safetensors:

* beside the original, `<stem>.safetensors`, when that folder is writable and the
  name is free (a file of that name that is not our conversion is never touched);
* else in cityclf's cache, `$CITYCLF_CACHE/heads/<sha256 prefix>/<stem>.safetensors`.

The copy records the original's name, sha256 and md5 in its metadata; a later
load of the original finds its copy by the sha256 and reads only that.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import WeightsError
from .head_files import head_from_state_dict, strip_wrapper_prefixes
from .hub import cache_dir, read_bin
from .weights import file_sha256

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def is_torch_file(path: str | os.PathLike) -> bool:
    """A file named as PyTorch weights are."""
    path = Path(path)
    return path.suffix.lower() in TORCH_SUFFIXES and path.is_file()


def conversion_record(path: str | os.PathLike) -> dict | None:
    """The metadata of a safetensors copy this module wrote (source name, sha256, md5), else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001  (missing, not safetensors: not a copy of ours)
        return None
    return meta if "source_sha256" in meta else None


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write(target: Path, tensors: dict, meta: dict, replace: bool) -> None:
    """Write `target` whole or not at all; never over a file that appeared meanwhile unless `replace`."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def safetensors_copy(path: str | os.PathLike) -> Path:
    """The safetensors copy of the PyTorch head file `path`, converted now if it has none yet."""
    from ..notices import note

    path = Path(path)
    sha = file_sha256(path)
    beside = path.with_suffix(".safetensors")
    cached = cache_dir().parent / "heads" / sha[:16] / (path.stem + ".safetensors")
    records = {target: conversion_record(target) for target in (beside, cached)}
    for target, record in records.items():
        if record is not None and record["source_sha256"] == sha:
            return target
    sd = strip_wrapper_prefixes(read_bin(path, str(path)))
    head_from_state_dict(sd, str(path), None, path.stem)  # a known layout, or the error naming the file
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}  # no shared storage in safetensors
    meta = {"converted_from": path.name, "source_sha256": sha, "source_md5": _md5(path)}
    problems = []
    for target, record in records.items():
        ours = record is not None
        if target.exists() and not ours:
            problems.append(f"{target} exists and is not a copy of ours")
            continue
        try:
            _write(target, tensors, meta, replace=ours)
        except OSError as e:
            if (conversion_record(target) or {}).get("source_sha256") == sha:
                return target  # another process converted the same file meanwhile
            problems.append(f"{target}: {e.strerror or e}")
            continue
        note(f"converted {path} (PyTorch weights) to {target}; later loads read the safetensors copy")
        return target
    raise WeightsError(f"could not write a safetensors copy of {path}: {'; '.join(problems)}. Make its folder "
                       "writable, or set CITYCLF_CACHE to a writable folder.")


__all__ = ["TORCH_SUFFIXES", "conversion_record", "is_torch_file", "safetensors_copy"]
