"""Copying or moving selected files under a folder, keeping their sub-folders and their caption sidecars.

Never overwrites: a name that is taken by other content is a conflict (renamed
`name-1.png`, skipped, or an error, as asked); a name that already holds the
same bytes is "already there" -- so a rerun, or a rerun after a kill, makes no
`-1` duplicates. A file already inside the destination stays where it is (the
destination is never nested in itself). Copies go through a temporary name and
fsync (safe_files.py); moves given a journal (journal.py) survive a kill.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .safe_files import copy_file, move_file, same_file_content, sweep_temporaries

#: caption files that travel with their image: `img.txt`, `img.json`, `img.caption` beside `img.png`
SIDECAR_SUFFIXES = (".txt", ".json", ".caption")

ALREADY_THERE = "already there"
PAST = {"copy": "copied", "move": "moved"}


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies under it (by absolute path)."""
    p, f = os.path.abspath(path), os.path.abspath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


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
        candidate = numbered(target, n)
        if not candidate.exists() and candidate not in taken:
            return candidate
        n += 1


def numbered(target: Path, n: int) -> Path:
    return target if n == 0 else target.with_name(f"{target.stem}-{n}{target.suffix}")


def sidecars_of(image: Path) -> list[Path]:
    """The caption files beside `image` that travel with it (regular files only)."""
    out = []
    for suffix in SIDECAR_SUFFIXES:
        side = image.with_name(image.stem + suffix)
        if side != image and side.is_file():
            out.append(side)
    return out


def sidecar_target(side: Path, image_target: Path) -> Path:
    return image_target.with_name(image_target.stem + side.suffix)


@dataclass
class Transfer:
    source: str
    target: str
    action: str  # "copy" / "move" / "skip" / "already there"
    done: bool = False
    error: str | None = None
    sidecars: list[tuple[str, str]] = field(default_factory=list)  # (source, target) that travel with it
    notes: list[str] = field(default_factory=list)  # a sidecar left behind, and why


def _state(source: Path, target: Path, taken: set[Path]) -> str:
    """'free', 'same' (holds the same bytes) or 'taken' for one candidate name."""
    if target in taken:
        return "taken"
    if not os.path.lexists(target):
        return "free"
    if os.path.islink(target):  # a link (even to the source itself) is never the file: removing the source
        return "taken"  # for a "finished" move would leave it dangling
    return "same" if same_file_content(source, target) else "taken"


def _candidate(source: Path, target: Path, sides: list[Path], taken: set[Path]) -> str:
    """The state of a candidate image name, its sidecars' names included: a caption never overwrites."""
    state = _state(source, target, taken)
    if state == "taken":
        return state
    for side in sides:
        if _state(side, sidecar_target(side, target), taken) == "taken" and state == "free":
            return "taken"  # a free image name whose caption name holds other text: look further
    return state


def plan_transfers(paths: Sequence[str], roots: Sequence[str], to: str | os.PathLike, move: bool,
                   on_conflict: str = "rename") -> list[Transfer]:
    """What copy_or_move would do, touching nothing."""
    if on_conflict not in ("rename", "skip", "error"):
        raise ConfigError(f"--on-conflict must be rename, skip or error, not {on_conflict!r}")
    verb = "move" if move else "copy"
    plan: list[Transfer] = []
    taken: set[Path] = set()
    for src in paths:
        source = Path(src)
        if inside(source, to):
            plan.append(Transfer(src, src, ALREADY_THERE, done=True))
            continue
        dst = destination(src, roots, to)
        sides = sidecars_of(source)
        n = 0
        while True:
            candidate = numbered(dst, n)
            state = _candidate(source, candidate, sides, taken)
            if state != "taken" or on_conflict != "rename":
                break
            n += 1
        if state == "taken":
            if on_conflict == "error":
                raise ConfigError(f"{candidate} already exists (from {src}); nothing was {PAST[verb]}. "
                                  "Use --on-conflict rename or skip, or another destination.")
            plan.append(Transfer(src, str(candidate), "skip", error="destination exists"))
            continue
        t = Transfer(src, str(candidate), ALREADY_THERE if state == "same" else verb)
        taken.add(candidate)
        for side in sides:
            side_dst = sidecar_target(side, candidate)
            side_state = _state(side, side_dst, taken)
            if side_state == "taken":
                t.notes.append(f"caption {side} left behind: {side_dst} holds other text")
                continue
            taken.add(side_dst)
            if side_state == "free" or move:  # a move removes an identical source caption too
                t.sidecars.append((str(side), str(side_dst)))
        plan.append(t)
    return plan


def transfer_one(source: Path, target: Path, move: bool) -> None:
    """Copy or move one file to a name that is free or already holds the same bytes."""
    sweep_temporaries(target)
    if os.path.lexists(target):
        if os.path.islink(target) or not same_file_content(source, target):
            raise FileExistsError(f"{target} appeared meanwhile with other content")
        if move and os.path.lexists(source):
            os.unlink(source)  # the bytes are at the destination already: the move is complete
        return
    (move_file if move else copy_file)(source, target)


def copy_or_move(paths: Sequence[str], roots: Sequence[str], to: str | os.PathLike, move: bool = False,
                 on_conflict: str = "rename", dry_run: bool = False, journal=None) -> list[Transfer]:
    """Copy (or move) files under `to`, keeping their folders and caption sidecars; never overwrites.

    on_conflict: 'rename' (name-1.png), 'skip', or 'error' (stop before touching anything).
    `journal` (journal.MoveJournal) records a move's intent before the first file
    moves and each file's new place as it lands.
    """
    plan = plan_transfers(paths, roots, to, move, on_conflict)
    if dry_run:
        return plan
    work = [t for t in plan if t.action != "skip" and (t.action != ALREADY_THERE or t.source != t.target)]
    for t in work:  # a killed run's temporaries, also beside captions it had already put in place
        for side in sidecars_of(Path(t.source)):
            sweep_temporaries(sidecar_target(side, Path(t.target)))
    if move and journal is not None:
        journal.record([(t.source, t.target, True) for t in work] +
                       [(s, d, False) for t in work for s, d in t.sidecars])
    for t in work:
        try:
            for src, dst, is_image in [(t.source, t.target, True), *((s, d, False) for s, d in t.sidecars)]:
                transfer_one(Path(src), Path(dst), move)
                if move and journal is not None:
                    journal.landed(src, dst, is_image)
            t.done = True
        except OSError as e:
            t.error = f"{e.strerror or e}"
            if move and journal is not None:
                journal.forget([t.source, *(s for s, _ in t.sidecars)])
    return plan


__all__ = ["ALREADY_THERE", "SIDECAR_SUFFIXES", "Transfer", "copy_or_move", "destination", "free_name",
           "inside", "plan_transfers", "sidecars_of", "transfer_one"]
