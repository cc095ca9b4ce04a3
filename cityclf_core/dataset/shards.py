"""Shards: a stable split of a dataset by path, for one job per machine (each into its own store, then merge)."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

from ..errors import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): the third of eight shards (K counts from 0)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text!r}: K must be in 0..N-1")
    return k, n


def in_shard(path: str | os.PathLike, roots: Sequence[str | os.PathLike], shard: tuple[int, int]) -> bool:
    """Whether `path` belongs to shard K of N: a stable hash of its path relative to its input root.

    Relative paths make the split the same on every machine, wherever the
    dataset is mounted; each shard embeds into its own store (see merge_stores).
    """
    k, n = shard
    rel = os.path.basename(path)
    p = os.path.abspath(path)
    for root in sorted((os.path.abspath(r) for r in roots), key=len, reverse=True):
        if p.startswith(root.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(p, root)
            break
    digest = hashlib.sha1(os.fsencode(rel.replace(os.sep, "/"))).digest()  # any name
    return int.from_bytes(digest[:8], "big") % n == k


__all__ = ["in_shard", "parse_shard"]
