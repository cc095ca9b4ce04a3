"""NaN and infinity are an error for the image they belong to, never a number in the output.

A CLIP with damaged weights gives NaN embeddings; a bit-rotted store gives NaN
back; either would print `NaN` (not JSON) or crash a bucket. Each stage checks
what it hands on and reports such an image like a bad file.
"""

from __future__ import annotations

import math

import numpy as np

EMBEDDING = ("its CLIP embedding holds NaN or infinite values: the CLIP's weights are damaged (load it again) or "
             "it cannot represent this image")
STORED = ("its stored embedding holds NaN or infinite values (the store is damaged here): embed it again "
          "into a new store")
OUTPUT = "a head gave NaN or infinite values for it (the head's or the CLIP's weights are damaged)"
STORED_SCORE = "its stored score is NaN or infinite (the store is damaged here): score it again"


def finite_array(values) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())


def finite_results(results: dict) -> bool:
    """Whether every head's numbers for one image are finite."""
    return all(math.isfinite(r.positive) and all(math.isfinite(v) for v in r.values) for r in results.values())


def finite_views(stacked: np.ndarray, counts: list[int]) -> list[bool]:
    """Per file (with `counts` views each in `stacked`), whether all its embeddings are finite."""
    ok_rows = np.isfinite(stacked).all(axis=1) if stacked.size else np.ones(len(stacked), dtype=bool)
    out, start = [], 0
    for n in counts:
        out.append(bool(ok_rows[start : start + n].all()))
        start += n
    return out


__all__ = ["EMBEDDING", "OUTPUT", "STORED", "STORED_SCORE", "finite_array", "finite_results", "finite_views"]
