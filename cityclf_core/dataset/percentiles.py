"""Thresholds relative to a distribution of scores: `HEAD=p80`, `--top 20%`, reference files.

    HEAD=p80          at least (--min) / at most (--max) the 80th percentile of HEAD's scores in a reference:
                      the store's own scores, another store (--reference OTHER.db), or a reference file
                      (--reference ref.json, written by `cityclf percentiles`)
    HEAD:CLASS=p80    the same for one class's probability
    --top 20%         the best fifth (of the images scored, or stored)

Percentiles are numpy's (linear interpolation between the sorted scores). A reference
file holds each head's (and class's) percentiles at every 0.1 from 0 to 100, so a
percentile with one decimal is exactly what numpy gives on the scores it was made
from; others are interpolated between those points.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..numbers import COUNT
from ..scoring.results import resolve_head_name

STEPS = 1000  # a reference file holds percentiles 0, 0.1, ..., 100
FORMAT = "cityclf-percentiles"


def parse_percentile(text: str, what: str = "percentile") -> float | None:
    """'p80' -> 80.0; None when `text` is not a percentile (a plain number). Outside 0-100 or not a finite
    number: a ConfigError naming `what`."""
    text = text.strip()
    if not text[:1] in ("p", "P"):
        return None
    try:
        p = float(text[1:])
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a percentile; write p and a number from 0 to 100, "
                          "e.g. p80") from None
    if not math.isfinite(p) or not 0 <= p <= 100:
        raise ConfigError(f"{what}: the percentile {text!r} is outside 0 to 100 (p0 = the lowest score, "
                          "p100 = the highest)")
    return p


@dataclass(frozen=True)
class TopShare:
    """`--top 20%`: a share of the images rather than a count."""

    percent: float

    def count(self, total: int) -> int:
        """How many of `total` images: rounded down, at least one when there are any."""
        return min(total, max(1, math.floor(total * self.percent / 100 + 1e-9))) if total else 0

    def __str__(self) -> str:
        return f"{self.percent:g}%"


def parse_top(text: str) -> int | TopShare:
    """'20' -> 20 images; '20%' -> the best 20%. A count must be a whole number of at least 1; a share must be
    above 0 and at most 100."""
    text = text.strip()
    if text.endswith("%"):
        try:
            p = float(text[:-1])
        except ValueError:
            raise ValueError(f"expected N or a share like 20%, got {text!r}") from None
        if not math.isfinite(p) or not 0 < p <= 100:
            raise ValueError(f"a share must be above 0% and at most 100%, got {text!r}")
        return TopShare(p)
    n, why = COUNT.problem(text)  # the one rule for counts (numbers.py)
    if why:
        raise ValueError(f"{text!r}: {why} (a number of images, or a share like 20%)")
    return n


# ---------------------------------------------------------------- where the distribution comes from


def percentile_of(values: np.ndarray, p: float, what: str) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        raise ConfigError(f"{what}: no scores to take a percentile of")
    return float(np.percentile(values, p))


class Distribution:
    """Where `HEAD=pNN` looks its threshold up: quantile(head, label, p)."""

    name = "the scores"

    def quantile(self, head: str, label: str | None, p: float) -> float:
        raise NotImplementedError


class ScoreValues(Distribution):
    """Percentiles computed from the scores themselves (numpy's): of a store, or of rows in memory."""

    def __init__(self, values: Callable[[str, str | None], np.ndarray], name: str):
        self.values, self.name = values, name
        self._cache: dict = {}

    def quantile(self, head: str, label: str | None, p: float) -> float:
        key = (head, label)
        if key not in self._cache:
            self._cache[key] = self.values(head, label)
        return percentile_of(self._cache[key], p, f"{head}{':' + label if label else ''} in {self.name}")


def store_distribution(store, combine: str) -> ScoreValues:
    return ScoreValues(lambda head, label: store.score_values(head, combine, label), f"store {store.path}")


def rows_distribution(rows) -> ScoreValues:
    def values(head, label):
        return np.array([res[head].value_of(label) if label else res[head].score for _, res in rows if head in res])

    return ScoreValues(values, "the scored images")


class ReferenceFile(Distribution):
    """A reference file written by `cityclf percentiles`."""

    def __init__(self, path: str | os.PathLike, data: dict):
        self.name, self.data = f"reference {path}", data

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ReferenceFile":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise ConfigError(f"reference {path}: cannot read it ({e.strerror or e})") from None
        except ValueError as e:
            raise ConfigError(f"reference {path}: not a JSON file ({e}); make one with cityclf percentiles "
                              "--store DB --out FILE.json") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("heads"), dict):
            raise ConfigError(f"reference {path}: not a reference file of cityclf percentiles")
        return cls(path, data)

    def heads(self) -> list[str]:
        return sorted(self.data["heads"])

    def quantile(self, head: str, label: str | None, p: float) -> float:
        entry = self.data["heads"].get(head)
        if entry is None:
            raise ConfigError(f"{self.name} has no head {head}; it has {', '.join(self.heads()) or 'none'}. "
                              "Make one from a store with these scores: cityclf percentiles --store DB --out FILE")
        if label is not None:
            classes = entry.get("classes", {})
            if label not in classes:
                raise ConfigError(f"{self.name}: head {head} has no class {label}; it has "
                                  f"{', '.join(classes) or 'none'}")
            table = classes[label]
        else:
            table = entry["score"]
        at = p * STEPS / 100
        lo = math.floor(at + 1e-9)
        if lo >= STEPS:
            return float(table[STEPS])
        frac = at - lo
        return float(table[lo]) if frac < 1e-9 else float(table[lo] + (table[lo + 1] - table[lo]) * frac)


def open_reference(path: str, combine: str, open_store) -> Distribution:
    """--reference: a reference file (.json) or another store."""
    if str(path).lower().endswith(".json"):
        return ReferenceFile.read(path)
    if not os.path.isfile(path):
        raise ConfigError(f"--reference {path}: no such file; give a store (.db) or a reference file (.json)")
    return store_distribution(open_store(path), combine)


def reference_table(values: Callable[[str, str | None], np.ndarray], heads: Sequence[str],
                    classes: dict[str, list[str]], combine: str) -> dict:
    """The reference file's content: per head (and class), the count and the percentiles at every 0.1."""
    grid = np.arange(STEPS + 1) * (100 / STEPS)
    out = {"format": FORMAT, "version": 1, "combine": combine, "heads": {}}
    for head in heads:
        v = np.asarray(values(head, None), dtype=np.float64)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        entry = {"count": int(len(v)), "score": np.percentile(v, grid).tolist()}
        if classes.get(head):
            entry["classes"] = {}
            for label in classes[head]:
                c = np.asarray(values(head, label), dtype=np.float64)
                c = c[np.isfinite(c)]
                if len(c):
                    entry["classes"][label] = np.percentile(c, grid).tolist()
        out["heads"][head] = entry
    return out


# ---------------------------------------------------------------- resolving a selection


def resolve(selection, heads: Sequence[str], distribution: Distribution | None, total: int | None):
    """`selection` with each percentile bound turned into its score in `distribution`, and a `--top 20%` into a
    count of `total` (None: left for select() to count the rows it gets)."""
    bounds = []
    for b in selection.bounds:
        if b.percentile is not None:
            if distribution is None:
                raise ConfigError(f"--{b.kind} {b.text}: a percentile needs scores to compare with (a store or "
                                  "--reference)")
            head = resolve_head_name(list(heads), b.head)
            b = replace(b, head=head, value=distribution.quantile(head, b.label, b.percentile))
        bounds.append(b)
    top, bottom = selection.top, selection.bottom
    if total is not None:
        top = top.count(total) if isinstance(top, TopShare) else top
        bottom = bottom.count(total) if isinstance(bottom, TopShare) else bottom
    return replace(selection, bounds=tuple(bounds), top=top, bottom=bottom)


def needs_resolving(selection) -> bool:
    return any(b.percentile is not None for b in selection.bounds) or isinstance(selection.top, TopShare) \
        or isinstance(selection.bottom, TopShare)


__all__ = ["Distribution", "ReferenceFile", "TopShare", "needs_resolving", "open_reference", "parse_percentile",
           "parse_top", "percentile_of", "reference_table", "resolve", "rows_distribution", "store_distribution"]
