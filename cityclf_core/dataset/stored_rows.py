"""Stored scores back as results, each rebuilt by its head's kind: no model, no torch (query, grid, Ray's writer)."""

from __future__ import annotations

from typing import Callable

from ..kinds import get_kind
from ..scoring.results import HeadResult
from .finite import STORED_SCORE, finite_array

Rows = list[tuple[str, dict[str, HeadResult]]]


def stored_results(store, heads: list[str] | None, combine: str,
                   on_skip: Callable[[str, str], None] | None = None) -> Rows:
    """The stored scores as results, per path: each rebuilt by its head's kind.

    A path whose stored numbers are not finite (a damaged store) is left out and passed to `on_skip`.
    """
    rows = []
    for path, per_head in store.scores(heads, combine).items():
        results = stored_row(per_head)
        if results is None:
            if on_skip:
                on_skip(path, STORED_SCORE)
            continue
        rows.append((path, results))
    return rows


def stored_row(per_head: dict) -> dict[str, HeadResult] | None:
    """One path's stored scores ({head: StoredScore}) as results, each rebuilt by its head's kind; None when a
    stored number is not finite (a damaged store: never shown, sorted or acted on)."""
    numbers = [s.score for s in per_head.values()] + [v for s in per_head.values() if isinstance(s.extra, dict)
                                                      for v in s.extra.values() if isinstance(v, (int, float))]
    if not finite_array(numbers):
        return None
    return {name: get_kind(s.kind).from_stored(name, s.score, s.label, s.extra) for name, s in per_head.items()}


__all__ = ["Rows", "stored_results", "stored_row"]
