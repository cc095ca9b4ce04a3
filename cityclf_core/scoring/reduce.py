"""Combining a head's per-view outputs into one result per image: the only place tiles are reduced.

Each output (class) is reduced over an image's views independently, as the
reference does: mean (default), median, max or min.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..defaults import COMBINES
from ..errors import ConfigError


def check_combine(how: str) -> str:
    if how not in COMBINES:
        raise ConfigError(f"unknown tile combine {how!r} (unknown combine: choose one of {', '.join(COMBINES)})")
    return how


def _reduce_grid(grid: torch.Tensor, how: str) -> torch.Tensor:
    """[n, views, N] -> [n, N]; NaN marks a missing view (images with fewer views than others)."""
    if how == "mean":
        return grid.nanmean(dim=1)
    if how == "median":
        return grid.nanmedian(dim=1).values
    if how == "max":
        return grid.nan_to_num(nan=float("-inf")).amax(dim=1)
    return grid.nan_to_num(nan=float("inf")).amin(dim=1)


def reduce_segments(values: torch.Tensor, counts: Sequence[int], how: str = "mean") -> torch.Tensor:
    """[sum(counts), N] per-view values -> [len(counts), N], each output reduced over its image's views.

    Vectorised (views padded with NaN to the largest count), so reducing a million
    images costs a few tensor operations, not a Python loop.
    """
    check_combine(how)
    n = len(counts)
    if n == 0:
        return values.new_zeros((0, values.shape[1]))
    counts_t = torch.as_tensor(counts, dtype=torch.long)
    if int(counts_t.min()) == int(counts_t.max()):  # one view count for all: a plain reshape
        return _reduce_grid(values.reshape(n, int(counts_t[0]), values.shape[1]), how)
    width = int(counts_t.max())
    rows = torch.repeat_interleave(torch.arange(n), counts_t)
    starts = torch.cumsum(counts_t, 0) - counts_t
    cols = torch.arange(values.shape[0]) - torch.repeat_interleave(starts, counts_t)
    grid = values.new_full((n, width, values.shape[1]), float("nan"))
    grid[rows, cols] = values
    return _reduce_grid(grid, how)


def reduce_tiles(values: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """[n_views, N] one image's per-view outputs -> [N]."""
    return reduce_segments(values, [int(values.shape[0])], how)[0]


__all__ = ["COMBINES", "check_combine", "reduce_segments", "reduce_tiles"]
