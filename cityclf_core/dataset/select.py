"""Selecting images by their results: bands (--min/--max) on any heads, then the top or bottom N."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError
from ..numbers import THRESHOLD
from .percentiles import TopShare, parse_percentile

from ..scoring.results import resolve_head_name

if TYPE_CHECKING:
    from ..scoring.results import HeadResult


@dataclass(frozen=True)
class Bound:
    head: str | None  # None: the first (or --sort-by) head
    label: str | None  # a class of that head, else its score
    value: float | None  # None until a percentile is looked up (percentiles.resolve)
    kind: str  # "min" or "max"
    percentile: float | None = None  # HEAD=p80: the 80th percentile of a reference distribution
    text: str = ""  # as given, for messages

    @classmethod
    def parse(cls, text: str, kind: str) -> "Bound":
        text = text.strip()
        head = label = None
        if "=" in text:
            target, _, number = text.rpartition("=")
            head, _, label = target.strip().partition(":")
            head, label = head.strip() or None, label.strip() or None
        else:
            number = text
        percentile = parse_percentile(number, f"--{kind} {text}")
        if percentile is not None:
            return cls(head, label, None, kind, percentile, text)
        value, why = THRESHOLD.problem(number)
        if why:
            raise ConfigError(f"--{kind} {text!r}: expected VALUE, HEAD=VALUE or HEAD:CLASS=VALUE with VALUE "
                              f"{THRESHOLD.describe()}, or a percentile such as p80")
        return cls(head, label, value, kind, None, text)


def value_of(results: dict[str, HeadResult], head: str | None, label: str | None) -> float:
    name = resolve_head_name(list(results), head)
    r = results[name]
    return r.value_of(label) if label else r.score


def select(rows: list[tuple[str, dict[str, HeadResult]]], bounds: Sequence[Bound] = (), top: int | None = None,
           bottom: int | None = None, sort_by: str | None = None) -> list[tuple[str, dict[str, HeadResult]]]:
    """Rows inside every bound; then the top (or bottom) N by the sort head's score (ties: path order). A share
    (`--top 20%`) is of all the rows given; percentile bounds must have been resolved (percentiles.resolve)."""
    if any(b.value is None for b in bounds):
        raise ConfigError("percentile bounds need a distribution to be looked up in (percentiles.resolve)")
    top = top.count(len(rows)) if isinstance(top, TopShare) else top
    bottom = bottom.count(len(rows)) if isinstance(bottom, TopShare) else bottom
    kept = []
    for path, res in rows:
        ok = True
        for b in bounds:
            v = value_of(res, b.head, b.label)
            if math.isnan(v) or (v < b.value if b.kind == "min" else v > b.value):
                ok = False
                break
        if ok:
            kept.append((path, res))
    if top or bottom:
        head, _, label = (sort_by or "").partition(":")
        key = lambda row: value_of(row[1], head or None, label or None)  # noqa: E731
        kept.sort(key=key, reverse=bool(top))
        kept = kept[: top or bottom]
    return kept


@dataclass(frozen=True)
class Selection:
    """What to keep: every bound must hold; then the top or bottom N by `sort_by` (HEAD or HEAD:CLASS)."""

    bounds: tuple[Bound, ...] = ()
    top: "int | TopShare | None" = None
    bottom: "int | TopShare | None" = None
    sort_by: str | None = None

    @classmethod
    def parse(cls, mins: Sequence[str] = (), maxs: Sequence[str] = (), top: int | None = None,
              bottom: int | None = None, sort_by: str | None = None) -> "Selection":
        bounds = tuple([Bound.parse(s, "min") for s in mins] + [Bound.parse(s, "max") for s in maxs])
        return cls(bounds, top, bottom, sort_by)

    @property
    def active(self) -> bool:
        """Whether anything is selected out (else every row is kept, in order, and can be streamed)."""
        return bool(self.bounds or self.top or self.bottom)

    def apply(self, rows: list[tuple[str, dict[str, HeadResult]]]) -> list[tuple[str, dict[str, HeadResult]]]:
        return select(rows, self.bounds, self.top, self.bottom, self.sort_by) if self.active else rows


__all__ = ["Bound", "Selection", "select", "value_of"]
