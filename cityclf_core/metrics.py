"""Validation metrics, plain numpy: rank and linear correlation, regression errors, classification scores."""

from __future__ import annotations

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x))
        # average ranks of ties
        vals, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    return pearson(ranks(a), ranks(b))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def class_metrics(pred: np.ndarray, true: np.ndarray, labels: list[str]) -> dict:
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(true, pred):
        cm[int(t), int(p)] += 1
    out: dict = {"n_val": int(len(true)), "accuracy": float((pred == true).mean()) if len(true) else float("nan")}
    f1s, ps, rs = [], [], []
    for i, name in enumerate(labels):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        key = name.lower().replace(" ", "_")
        out[f"precision_{key}"], out[f"recall_{key}"], out[f"f1_{key}"] = float(prec), float(rec), float(f1)
        ps.append(prec), rs.append(rec), f1s.append(f1)
    out["precision_macro"], out["recall_macro"], out["f1_macro"] = (float(np.mean(ps)), float(np.mean(rs)),
                                                                    float(np.mean(f1s)))
    out["chance_accuracy"] = float(max(np.bincount(true.astype(int), minlength=k)) / len(true)) if len(true) else 0.0
    out["labels"] = labels
    out["confusion_matrix"] = cm.tolist()
    return out


def score_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    return {"n_val": int(len(true)), "mae": float(np.abs(pred - true).mean()) if len(true) else float("nan"),
            "rmse": float(np.sqrt(((pred - true) ** 2).mean())) if len(true) else float("nan"),
            "spearman": spearman(pred, true) if len(true) > 1 else float("nan"),
            "pearson": pearson(pred, true)}


__all__ = ["class_metrics", "pearson", "score_metrics", "spearman"]
