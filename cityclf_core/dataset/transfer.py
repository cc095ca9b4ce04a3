"""Copying or moving selected files under a folder, keeping their sub-folders; never overwriting."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError


def destination(path: str, roots: Sequence[str], to: str | os.PathLike) -> Path:
    """`to` / (path relative to the input root it came from), keeping sub-folders."""
    p = os.path.abspath(path)
    for root in sorted((os.path.abspath(r) for r in roots), key=len, reverse=True):
        if os.path.isdir(root) and (p == root or p.startswith(root.rstrip(os.sep) + os.sep)):
            return Path(to) / os.path.relpath(p, root)
        if os.path.isfile(root) and p == root:
            return Path(to) / os.path.basename(p)
    return Path(to) / os.path.basename(p)


def free_name(target: Path, taken: set[Path] = frozenset()) -> Path:
    """`name.png` -> `name-1.png`, `name-2.png`, ... the first that neither exists nor is planned."""
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists() and candidate not in taken:
            return candidate
        n += 1


@dataclass
class Transfer:
    source: str
    target: str
    action: str  # "copy" / "move" / "skip" (exists) / "renamed copy" ...
    done: bool = False
    error: str | None = None


def copy_or_move(paths: Sequence[str], roots: Sequence[str], to: str | os.PathLike, move: bool = False,
                 on_conflict: str = "rename", dry_run: bool = False) -> list[Transfer]:
    """Copy (or move) files under `to`, keeping their folders; never overwrites an existing file.

    on_conflict: 'rename' (name-1.png), 'skip', or 'error' (stop before touching anything).
    """
    if on_conflict not in ("rename", "skip", "error"):
        raise ConfigError(f"--on-conflict must be rename, skip or error, not {on_conflict!r}")
    verb = "move" if move else "copy"
    plan: list[Transfer] = []
    taken: set[Path] = set()
    for src in paths:
        dst = destination(src, roots, to)
        if os.path.abspath(dst) == os.path.abspath(src):
            plan.append(Transfer(src, str(dst), "skip", error="source and destination are the same file"))
            continue
        if dst.exists() or dst in taken:
            if on_conflict == "error":
                raise ConfigError(f"{dst} already exists (from {src}); nothing was {verb}d. "
                                  "Use --on-conflict rename or skip, or another destination.")
            if on_conflict == "skip":
                plan.append(Transfer(src, str(dst), "skip", error="destination exists"))
                continue
            dst = free_name(dst, taken)
        taken.add(dst)
        plan.append(Transfer(src, str(dst), verb))
    if dry_run:
        return plan
    for t in plan:
        if t.action == "skip":
            continue
        try:
            _transfer(Path(t.source), Path(t.target), move)
            t.done = True
        except OSError as e:
            t.error = f"{e.strerror or e}"
    return plan


def _transfer(src: Path, dst: Path, move: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.link(src, dst)  # fails if dst exists: never overwrites, atomic on one file system
            os.unlink(src)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    with open(src, "rb") as fin, open(dst, "xb") as fout:  # 'x': fails if dst appeared meanwhile
        shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copystat(src, dst)
    if move:
        os.unlink(src)


__all__ = ["Transfer", "copy_or_move", "destination", "free_name"]
