"""Splits of the records into train / validation / test.

artist  grouped by artist (`user_id`): no artist on two sides. Records are
        works (one per artwork id, see records.py), so the pages of a work are
        always together. Works with no known artist are left out.
time    the oldest works train, the newest test (validation: the newest of the
        training part). Artists may appear on both sides: it answers "does it
        still work on next month's uploads", not "on new artists".
random  deliberately UNGROUPED (works shuffled one by one): an artist's works
        land on both sides, so a head can score well by recognising the
        artist. Only for showing that leak; never for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .records import Records

SPLITS = ("artist", "time", "random")


@dataclass
class Split:
    name: str
    seed: int
    train: np.ndarray  # record indices
    val: np.ndarray
    test: np.ndarray
    left_out: int = 0  # records that could not be placed (no artist / no date)

    def sizes(self) -> str:
        return f"{len(self.train)} train, {len(self.val)} validation, {len(self.test)} test"


def _check(test_fraction: float, val_fraction: float) -> None:
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ConfigError(f"split fractions must leave something to train on: test {test_fraction}, "
                          f"validation {val_fraction}")


def _take_groups(groups: np.ndarray, idx: np.ndarray, fraction: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) of `idx`: whole groups in random order until `fraction` of the records are taken."""
    if fraction <= 0 or len(idx) == 0:
        return idx[:0], idx
    keys = np.unique(groups[idx])
    rng.shuffle(keys)
    sizes = {k: n for k, n in zip(*np.unique(groups[idx], return_counts=True))}
    want, chosen, total = fraction * len(idx), [], 0
    for k in keys:
        if total >= want or len(chosen) >= len(keys) - 1:
            break
        chosen.append(k)
        total += sizes[k]
    mask = np.isin(groups[idx], np.array(chosen, dtype=groups.dtype))
    return idx[mask], idx[~mask]


def artist_split(rec: Records, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> Split:
    _check(test_fraction, val_fraction)
    known = np.flatnonzero(rec.user_id >= 0)
    if len(np.unique(rec.user_id[known])) < 3:
        raise ConfigError(f"an artist split needs at least 3 artists with works; found "
                          f"{len(np.unique(rec.user_id[known]))}")
    rng = np.random.default_rng(seed)
    test, rest = _take_groups(rec.user_id, known, test_fraction, rng)
    val, train = _take_groups(rec.user_id, rest, val_fraction / (1 - test_fraction), rng)
    return Split("artist", seed, np.sort(train), np.sort(val), np.sort(test), len(rec) - len(known))


def time_split(rec: Records, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> Split:
    _check(test_fraction, val_fraction)
    known = np.flatnonzero(np.isfinite(rec.uploaded))
    if len(known) < 3:
        raise ConfigError("a time split needs upload dates; fewer than 3 works have one")
    order = known[np.lexsort((rec.illust_id[known], rec.uploaded[known]))]
    n_test = max(1, int(round(test_fraction * len(order))))
    n_val = int(round(val_fraction * len(order)))
    train, val, test = order[: len(order) - n_test - n_val], order[len(order) - n_test - n_val: len(order) - n_test], \
        order[len(order) - n_test:]
    return Split("time", seed, np.sort(train), np.sort(val), np.sort(test), len(rec) - len(known))


def random_split(rec: Records, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """UNGROUPED: for measuring the artist leak only."""
    _check(test_fraction, val_fraction)
    order = np.random.default_rng(seed).permutation(len(rec))
    n_test, n_val = int(round(test_fraction * len(rec))), int(round(val_fraction * len(rec)))
    return Split("random", seed, np.sort(order[n_test + n_val:]), np.sort(order[n_test:n_test + n_val]),
                 np.sort(order[:n_test]))


def make_split(name: str, rec: Records, test_fraction: float = 0.2, val_fraction: float = 0.1,
               seed: int = 0) -> Split:
    try:
        fn = {"artist": artist_split, "time": time_split, "random": random_split}[name]
    except KeyError:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {name!r}") from None
    return fn(rec, test_fraction, val_fraction, seed)


def artists_on_both_sides(rec: Records, split: Split) -> int:
    """How many artists have works in training (train + validation) and in test."""
    seen = set(rec.user_id[np.concatenate([split.train, split.val])].tolist()) - {-1}
    return len(seen & (set(rec.user_id[split.test].tolist()) - {-1}))


__all__ = ["SPLITS", "Split", "artist_split", "artists_on_both_sides", "make_split", "random_split", "time_split"]
