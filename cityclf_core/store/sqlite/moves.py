"""The SQLite store's move journal: files about to move, so that an interrupted copy or move can be finished.

The table is created by the first move, not on open: opening a store never
writes to it unasked. How the journal is used: dataset/journal.py.
"""

from __future__ import annotations

import time

from .schema import MOVES
from .sql import from_db, guarded, to_db


class MoveJournal:
    """The moves table: (source, target, is_image) planned and not yet done."""

    @guarded
    def plan_moves(self, moves: list[tuple[str, str, bool]]) -> None:
        """Record (source, target, is_image) for files about to move, in one transaction."""
        now = time.time()
        self.db.executescript(MOVES)
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO moves (source, target, image, planned) VALUES (?,?,?,?)",
                                [(to_db(s), to_db(t), int(bool(i)), now) for s, t, i in moves])

    @guarded
    def moved(self, source: str, target: str, is_image: bool) -> None:
        """One file has landed at its target: its rows follow it and its journal row goes, in one transaction."""
        with self.transaction():
            if is_image:
                self._move_rows(source, target)
            self.db.execute("DELETE FROM moves WHERE source = ?", (to_db(source),))

    @guarded
    def drop_moves(self, sources: list[str]) -> None:
        if not sources or not self._has_moves():
            return
        with self.transaction():
            self.db.executemany("DELETE FROM moves WHERE source = ?", [(to_db(s),) for s in sources])

    def _has_moves(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'moves'").fetchone() \
            is not None

    @guarded
    def pending_moves(self) -> list[tuple[str, str, bool]]:
        """The moves an interrupted run left unfinished: (source, target, is_image), images first."""
        if not self._has_moves():
            return []  # no move has touched this store
        return [(from_db(s), from_db(t), bool(i)) for s, t, i in self.db.execute(
            "SELECT source, target, image FROM moves ORDER BY image DESC, planned, source")]


__all__ = ["MoveJournal"]
