"""Selecting stored scores inside the store: bands, sort and top-N run in SQL, results stream in blocks.

The same rules as select.py (all bounds hold; then the top or bottom N by the sort
head's value, ties in path order), but the store does the filtering and ordering
(an index on the stored scores serves a score band and a top-N), and only one
block of rows is in memory at a time. Rows whose file is gone are skipped and
reported, and do not count towards N.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

from ..scoring.results import HeadResult, resolve_head_name
from .finite import STORED_SCORE
from .stored_rows import stored_row
from .select import Selection

GONE = "the file is gone (renamed or deleted outside cityclf); `cityclf prune --store DB` forgets it"


def _label(label: str | None, head: str, sample: dict[str, HeadResult]) -> str | None:
    """A class named by its index ('1') -> its name, as stored in the probabilities."""
    if label is None or not label.isdigit() or head not in sample:
        return label
    labels = sample[head].labels
    return labels[int(label)] if int(label) < len(labels) else label


def select_stored(store, heads: Sequence[str], combine: str, selection: Selection,
                  on_skip: Callable[[str, str], None] | None = None, block: int = 1000
                  ) -> Iterator[tuple[str, dict[str, HeadResult]]]:
    """(path, {head: result}) of the selected stored scores, in order; `heads[0]` is the head a bare value
    means. Files that no longer exist, and damaged stored scores, are passed to `on_skip(path, why)` and skipped
    (they do not count towards a top N)."""
    heads = list(heads)
    first = store.sample_path(heads[0], combine)
    sample = _results(store, heads, combine, [first]).get(first, {}) if first else {}
    bounds = []
    for b in selection.bounds:
        head = resolve_head_name(heads, b.head)
        bounds.append((head, _label(b.label, head, sample), b.kind, b.value))
    order, limit = None, None
    if selection.top or selection.bottom:
        name, _, label = (selection.sort_by or "").partition(":")
        head = resolve_head_name(heads, name or None)
        order, limit = (head, _label(label or None, head, sample)), selection.top or selection.bottom
    if sample:  # unknown classes: the same clear error as in memory
        for head, label, _, _ in bounds + ([(*order, None, None)] if order else []):
            if label is not None and head in sample:
                sample[head].value_of(label)
    done = 0
    block = min(block, limit) if limit else block  # --top 100: fetch results for 100 rows, not a whole block
    for paths in store.select_paths(combine, heads[0], order, descending=bool(selection.top), bounds=bounds,
                                    block=block):
        results = _results(store, heads, combine, paths)
        for path in paths:
            why = GONE if not os.path.exists(path) else STORED_SCORE if results.get(path) is None else None
            if why:
                if on_skip:
                    on_skip(path, why)
                continue
            yield path, results[path]
            done += 1
            if limit is not None and done >= limit:
                return


def _results(store, heads: list[str], combine: str, paths: list[str]) -> dict[str, dict[str, HeadResult] | None]:
    out: dict[str, dict[str, HeadResult] | None] = {}
    for start in range(0, len(paths), 900):
        for path, per_head in store.scores(heads, combine, paths=paths[start : start + 900]).items():
            out[path] = stored_row({h: per_head[h] for h in heads if h in per_head})
    return out


def common_folder(store, outside: str | None = None) -> list[str]:
    """The folder every scored path (not under `outside`) is under (from the first and last path: no full scan)."""
    lo, hi = store.path_range(os.path.abspath(outside) if outside else None)
    if lo is None:
        return []
    return [os.path.commonpath([os.path.dirname(lo), os.path.dirname(hi)])]


__all__ = ["common_folder", "select_stored"]
