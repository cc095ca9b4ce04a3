"""CLIP folder fingerprints, remembered by the folder's files' sizes and mtimes.

Fingerprinting reads a CLIP folder's config and a few tensors; a rerun over an
unchanged folder looks the fingerprint up instead (in `$CITYCLF_CACHE`, default
~/.cache/cityclf, fingerprints.json). Any change to a file's size or mtime, or a
file added or removed, computes it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

WEIGHT_SUFFIXES = (".safetensors", ".json")


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


def remembered_fingerprint(folder: str | os.PathLike, compute: Callable[[Path], str]) -> str:
    folder = Path(folder).resolve()
    sig = signature(folder)
    path = cache_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(folder)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("files") == sig and isinstance(entry.get("fingerprint"), str):
        return entry["fingerprint"]
    fingerprint = compute(folder)
    if not isinstance(known, dict):
        known = {}
    known[str(folder)] = {"files": sig, "fingerprint": fingerprint}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compute next time too
    return fingerprint


__all__ = ["remembered_fingerprint", "signature"]
