"""Honest evaluation: metrics on held-out works, the metadata-only baseline, the ablation table.

Metrics of predicted scores against the target on the TEST works (the target's
scalers fitted on the training works): Spearman (primary), Pearson, MAE, and
top-10% precision (of the works predicted in the top 10%, the share truly in
the top 10%; chance is 0.1). The same per sanity level (general / sensitive /
explicit) and for AI and human works (the document's AI rule).

The baseline predicts from metadata alone: number of tags, page count, AI
flag, sanity level (one-hot) and log(1 + age in days), by closed-form ridge
regression fitted on the training works. What a head scores above it is what
the image adds.
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
    return out


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


__all__ = ["GROUPS", "MetadataBaseline", "metadata_features", "popularity_metrics", "top_precision"]
