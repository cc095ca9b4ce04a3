"""Honest evaluation: metrics on held-out works, the metadata-only baseline, the ablation table.

Metrics of predicted scores against the target on the TEST works (the target's
scalers fitted on the training works): Spearman (primary), Pearson, MAE, and
top-10% precision (of the works predicted in the top 10%, the share truly in
the top 10%; chance is 0.1). The same per sanity level (general / sensitive /
explicit) and for AI and human works (the document's AI rule).

Uncertainty: `bootstrap_draws` resamples the test works BY ARTIST (whole
artists with replacement; works without a known artist each count as one), so
that an interval reflects how many artists were tested, not only how many
works. Within-artist Spearman (the mean over test artists with at least 3
works, weighted by works) says whether a head ranks an artist's works among
themselves; between-artist Spearman (of the artists' mean prediction against
their mean target) says whether it ranks the artists.

The baseline predicts from metadata alone: number of tags, page count, AI
flag, sanity level (one-hot) and log(1 + age in days), by closed-form ridge
regression fitted on the training works. What a head scores above it is what
the image adds. `RidgeProbe` is the linear probe on the same embeddings the
heads see: ridge regression with its penalty chosen on the validation works
(never the test works), then refitted on training + validation.
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import pearson, spearman
from .records import Records

GROUPS = {"general": lambda r: r.sanity == 2, "sensitive": lambda r: r.sanity == 4,
          "explicit": lambda r: r.sanity == 6, "ai": lambda r: r.ai, "human": lambda r: ~r.ai}
TOP = 0.10


def top_precision(pred: np.ndarray, true: np.ndarray, top: float = TOP) -> float:
    """Share of the predicted top `top` that is in the true top `top` (ties broken by order)."""
    n = len(true)
    k = max(1, int(math.ceil(top * n)))
    if n < 2:
        return float("nan")
    predicted = set(np.argsort(-pred, kind="mergesort")[:k].tolist())
    actual = set(np.argsort(-true, kind="mergesort")[:k].tolist())
    return len(predicted & actual) / k


def popularity_metrics(pred: np.ndarray, true: np.ndarray, rec: Records) -> dict:
    """Flat metrics, overall and per group (groups with fewer than 5 works get n only)."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    out = {"n": int(len(true)), "spearman": spearman(pred, true) if len(true) > 1 else float("nan"),
           "pearson": pearson(pred, true), "mae": float(np.abs(pred - true).mean()) if len(true) else float("nan"),
           "top10_precision": top_precision(pred, true)}
    for name, select in GROUPS.items():
        mask = np.asarray(select(rec), dtype=bool)
        out[f"n_{name}"] = int(mask.sum())
        out[f"spearman_{name}"] = spearman(pred[mask], true[mask]) if mask.sum() >= 5 else float("nan")
        if name in ("general", "sensitive", "explicit"):
            out[f"top10_precision_{name}"] = top_precision(pred[mask], true[mask]) if mask.sum() >= 10 \
                else float("nan")
    out["spearman_within_artist"], out["spearman_between_artist"] = within_between(pred, true, rec.user_id)
    return out


MIN_WORKS = 3  # an artist's works needed for a within-artist Spearman


def within_between(pred: np.ndarray, true: np.ndarray, artists: np.ndarray) -> tuple[float, float]:
    """(within-artist Spearman: the works-weighted mean over artists with >= 3 works; between-artist Spearman:
    of the artists' mean prediction against their mean target). Unknown artists (-1) are left out."""
    known = artists >= 0
    users, inv = np.unique(artists[known], return_inverse=True)
    p, t = pred[known], true[known]
    rhos, weights = [], []
    for u in range(len(users)):
        mine = inv == u
        if mine.sum() >= MIN_WORKS:
            rho = spearman(p[mine], t[mine])
            if rho == rho:
                rhos.append(rho)
                weights.append(mine.sum())
    within = float(np.average(rhos, weights=weights)) if rhos else float("nan")
    if len(users) < 3:
        return within, float("nan")
    counts = np.bincount(inv)
    between = spearman(np.bincount(inv, weights=p) / counts, np.bincount(inv, weights=t) / counts)
    return within, between


# ---------------------------------------------------------------- intervals


def bootstrap_draws(artists: np.ndarray, draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`draws` index arrays, each the works of artists drawn with replacement (unknown artists: one work each)."""
    artists = np.asarray(artists)
    clusters = np.where(artists >= 0, artists, -1 - np.arange(len(artists)))
    _, inv = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inv == c) for c in range(inv.max() + 1)] if len(inv) else []
    out = []
    for _ in range(draws):
        pick = rng.integers(0, len(members), len(members))
        out.append(np.concatenate([members[c] for c in pick]))
    return out


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [float("nan"), float("nan")]
    lo = (1 - level) / 2
    return [float(np.quantile(v, lo)), float(np.quantile(v, 1 - lo))]


# ---------------------------------------------------------------- the linear probe


class RidgeProbe:
    """Ridge regression on standardised embeddings; the penalty chosen on validation works only."""

    GRID = tuple(10.0 ** e for e in range(-2, 6))

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> "RidgeProbe":
        if len(y_val) >= 3:
            scores = {lam: self._fit(x_train, y_train, lam)._mse(x_val, y_val) for lam in self.GRID}
            self.lam = min(scores, key=scores.get)
        else:
            self.lam = 1.0
        return self._fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), self.lam)

    def _fit(self, x: np.ndarray, y: np.ndarray, lam: float) -> "RidgeProbe":
        x = np.asarray(x, np.float64)
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        self.std[self.std == 0] = 1.0
        z = (x - self.mean) / self.std
        self.bias = float(np.mean(y))
        self.w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (np.asarray(y, np.float64) - self.bias))
        return self

    def _mse(self, x, y) -> float:
        return float(np.mean((self.predict(x) - y) ** 2))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.w + self.bias


# ---------------------------------------------------------------- the metadata-only baseline


def metadata_features(rec: Records) -> np.ndarray:
    age = np.log1p(np.clip(rec.age_days, 0, None))
    return np.stack([rec.tags_count, rec.page_count, rec.ai.astype(float), rec.sanity == 2, rec.sanity == 4,
                     rec.sanity == 6, age], axis=1).astype(np.float64)


class MetadataBaseline:
    """Ridge regression on metadata_features, standardised with the training works' statistics."""

    def __init__(self, l2: float = 1.0):
        self.l2 = l2

    def fit(self, rec: Records, y: np.ndarray) -> "MetadataBaseline":
        x = metadata_features(rec)
        self.fill = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        self.fill = np.where(np.isfinite(self.fill), self.fill, 0.0)
        x = self._filled(x)
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        self.std[self.std == 0] = 1.0
        z = (x - self.mean) / self.std
        self.bias = float(y.mean())
        self.w = np.linalg.solve(z.T @ z + self.l2 * np.eye(z.shape[1]), z.T @ (y - self.bias))
        return self

    def _filled(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), x, self.fill)

    def predict(self, rec: Records) -> np.ndarray:
        return ((self._filled(metadata_features(rec)) - self.mean) / self.std) @ self.w + self.bias


__all__ = ["GROUPS", "MetadataBaseline", "RidgeProbe", "bootstrap_draws", "interval", "metadata_features",
           "popularity_metrics", "top_precision", "within_between"]
