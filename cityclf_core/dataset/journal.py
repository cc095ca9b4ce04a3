"""A move that survives a kill: its intent is in the store before the first file moves.

    MoveJournal             what copy_or_move tells the store: the plan, then each file as it lands
    finish_interrupted_moves  on the next run, roll every recorded move forward

The store keeps one row per file to move (images and their caption sidecars).
Each file's new path is committed (with its image's rows in the store) in one
transaction as it lands; a run killed at any moment leaves rows for the files
whose move is not yet committed, and the next run completes each of them: a
file found at its target is recorded there, one still at its source is moved,
one at both (a kill between link and unlink, or after a cross-device copy) has
its source removed once the bytes are checked to be the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .transfer import transfer_one


class MoveJournal:
    def __init__(self, store):
        self.store = store

    def record(self, moves: list[tuple[str, str, bool]]) -> None:
        """(source, target, is_image) for every file about to move, committed before any moves."""
        self.store.plan_moves(moves)

    def landed(self, source: str, target: str, is_image: bool) -> None:
        self.store.moved(source, target, is_image)

    def forget(self, sources: Iterable[str]) -> None:
        self.store.drop_moves(list(sources))


def finish_interrupted_moves(store) -> tuple[int, list[tuple[str, str]]]:
    """Complete the moves an interrupted run recorded: (files completed, [(path, why left in place)])."""
    completed, problems = 0, []
    for source, target, is_image in store.pending_moves():
        src, dst = Path(source), Path(target)
        try:
            if not os.path.lexists(src) and not os.path.lexists(dst):
                problems.append((source, f"neither it nor {target} exists any more; forgot the move"))
                store.drop_moves([source])
                continue
            if os.path.lexists(src):
                transfer_one(src, dst, move=True)
            store.moved(source, target, is_image)
            completed += 1
        except OSError as e:
            problems.append((source, f"could not finish moving it to {target} ({e.strerror or e}); left in place"))
            store.drop_moves([source])
    return completed, problems


__all__ = ["MoveJournal", "finish_interrupted_moves"]
