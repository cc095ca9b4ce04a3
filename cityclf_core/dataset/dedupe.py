"""Near-duplicate images from stored whole-image embeddings: similar pairs, grouped, one kept per group.

    stored_vectors   the store's whole-image embeddings of one CLIP, L2-normalised, with their paths
    similar_pairs    every pair with cosine >= a threshold: exact (blockwise matrix products) or, for
                     large stores, faiss's inverted-file range search (optional extra `cityclf[ann]`)
    group_pairs      groups = connected components of those pairs (union-find)
    find_duplicates  all of it, plus which image of each group is kept: the best by a head's stored
                     score, else the largest file, then the first path

Exact search costs N^2/2 dot products in blocks of rows (bounded memory); it is the
default up to EXACT_UP_TO images. Above that, faiss (when installed) runs a
range search over an inverted file (k-means cells): nearly the same pairs (recall
against exact search is measured in benchmarks/bench_dedupe.py) at a fraction of
the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError

WHOLE = "whole"  # the whole-image crop policy's key in the store (crops.WHOLE_IMAGE.key)
EXACT_UP_TO = 50_000
METHODS = ("auto", "exact", "ann")


@dataclass
class DuplicateGroup:
    """Images whose whole-image embeddings are linked by pairs with cosine >= the threshold."""

    keep: str
    others: list[str]
    similarity: float  # the lowest similarity of the pairs that link the group
    scores: dict[str, float] = field(default_factory=dict)  # path -> the ranking head's score, when one was given
    sizes: dict[str, int] = field(default_factory=dict)  # path -> file size in bytes

    @property
    def members(self) -> list[str]:
        return [self.keep, *self.others]


def _whole_set(store, clip_identity: str | None):
    sets = [p for p in store.policies() if p.policy == WHOLE]
    if clip_identity is not None:
        sets = [p for p in sets if p.encoder.identity == clip_identity]
    if not sets:
        raise ConfigError(f"store {store.path} holds no whole-image embeddings"
                          + (" of that CLIP" if clip_identity else "")
                          + "; make them with `cityclf embed FOLDER --store DB --no-tiling --clip ...` "
                            "(or score with a whole-image head)")
    if len(sets) > 1:
        names = ", ".join(p.encoder.source for p in sets)
        raise ConfigError(f"store {store.path} holds whole-image embeddings of several CLIPs ({names}); "
                          "choose one with --clip")
    return sets[0].encoder, sets[0].count


def stored_vectors(store, clip_identity: str | None = None, block: int = 8192) -> tuple[list[str], np.ndarray]:
    """(paths, [N, D] float32 unit vectors) of every stored file with a whole-image embedding of one CLIP."""
    encoder, expected = _whole_set(store, clip_identity)
    paths: list[str] = []
    vectors = np.empty((expected, encoder.embed_dim), np.float32)  # filled in place: one copy in memory
    for chunk in store.file_paths(block):
        found, counts, stacked, _ = store.read_embeddings(chunk, encoder, WHOLE)
        if any(c != 1 for c in counts):  # one view per file for the whole image; anything else is not ours
            raise ConfigError(f"store {store.path}: whole-image embeddings with several views; it is damaged")
        if len(paths) + len(found) > len(vectors):  # several paths share a content's embedding: grow
            vectors = np.concatenate([vectors, np.empty((len(found), encoder.embed_dim), np.float32)])
        vectors[len(paths):len(paths) + len(found)] = stacked
        paths += found
    vectors = vectors[:len(paths)]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors /= np.where(norms > 0, norms, 1)
    return paths, np.ascontiguousarray(vectors, dtype=np.float32)


def exact_pairs(vectors: np.ndarray, threshold: float, block: int = 2048) -> Iterator[tuple[int, int, float]]:
    """Every (i, j, cosine) with i < j and cosine >= threshold, from blocks of rows against the rows after them."""
    n = len(vectors)
    for start in range(0, n, block):
        rows = vectors[start:start + block]
        sims = rows @ vectors[start:].T  # [block, n - start]
        ii, jj = np.nonzero(sims >= threshold)
        keep = jj > ii  # upper triangle: each pair once, no self-pairs
        for i, j in zip(ii[keep], jj[keep]):
            yield start + int(i), start + int(j), float(sims[i, j])


def ann_pairs(vectors: np.ndarray, threshold: float, nprobe: int = 8, batch: int = 16384,
              seed: int = 0) -> Iterator[tuple[int, int, float]]:
    """The pairs of exact_pairs from faiss's inverted-file range search: vectors are split into about sqrt(N)
    cells around k-means centroids and each is compared with the vectors of its `nprobe` nearest cells (near
    copies nearly always share one)."""
    try:
        import faiss  # optional: `pip install -e ".[ann]"`
    except ImportError:
        raise ConfigError("--method ann needs faiss: pip install faiss-cpu (or the checkout's extra: "
                          "pip install -e \".[ann]\"); --method exact needs nothing") from None
    n, d = vectors.shape
    if n < 2:
        return
    nlist = max(1, min(int(math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per cell
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    rng = np.random.default_rng(seed)
    sample = vectors if n <= 64 * nlist else vectors[rng.choice(n, 64 * nlist, replace=False)]
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))  # range_search keeps sim > radius
    for start in range(0, n, batch):
        lims, sims, ids = index.range_search(vectors[start:start + batch], radius)
        for q in range(len(lims) - 1):
            i = start + q
            for s, j in zip(sims[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]]):
                if j > i and s >= threshold:
                    yield i, int(j), float(s)


def similar_pairs(vectors: np.ndarray, threshold: float, method: str = "auto") -> Iterator[tuple[int, int, float]]:
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "auto":
        method = "exact" if len(vectors) <= EXACT_UP_TO or not _has_faiss() else "ann"
    return (exact_pairs if method == "exact" else ann_pairs)(vectors, threshold)


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def group_pairs(n: int, pairs: Iterator[tuple[int, int, float]]) -> list[tuple[list[int], float]]:
    """Connected components of size >= 2 (members in index order) and the lowest linking similarity of each."""
    parent = list(range(n))
    low: dict[int, float] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linked: list[tuple[int, int, float]] = []
    for i, j, s in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
        linked.append((i, j, s))
    members: dict[int, list[int]] = {}
    for i, j, s in linked:
        r = root(i)
        low[r] = min(low.get(r, 1.0), s)
    for i in range(n):
        r = root(i)
        if r in low:
            members.setdefault(r, []).append(i)
    return [(members[r], low[r]) for r in sorted(members)]


def find_duplicates(store, threshold: float, head: str | None = None, combine: str = "mean",
                    clip_identity: str | None = None, method: str = "auto",
                    exists: Callable[[str], bool] | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate stored images, each with the one to keep first.

    The kept image is the one with the highest stored score of `head` (with `combine`), else the largest
    file, ties by path. Files for which `exists` is false (gone from disk) are left out before grouping.
    """
    if not (-1.0 <= threshold <= 1.0) or math.isnan(threshold):
        raise ConfigError(f"--threshold {threshold}: a cosine similarity between -1 and 1 (e.g. 0.95)")
    paths, vectors = stored_vectors(store, clip_identity)
    if exists is not None:
        present = [i for i, p in enumerate(paths) if exists(p)]
        if len(present) != len(paths):
            paths, vectors = [paths[i] for i in present], vectors[present]
    groups = group_pairs(len(paths), similar_pairs(vectors, threshold, method))
    if not groups:
        return []
    involved = [paths[i] for idx, _ in groups for i in idx]
    sizes = {f.path: f.size or 0 for f in store.files(involved)}
    scores: dict[str, float] = {}
    if head is not None:
        if head not in store.scored_heads(combine):
            raise ConfigError(f"store {store.path} has no scores of {head} (--combine {combine}); "
                              f"score it first: cityclf score --store {store.path} --model {head}")
        for start in range(0, len(involved), 900):
            for path, per_head in store.scores([head], combine, paths=involved[start:start + 900]).items():
                if head in per_head and per_head[head].score is not None:
                    scores[path] = float(per_head[head].score)
    out = []
    for idx, low in groups:
        members = [paths[i] for i in idx]
        ranked = sorted(members, key=lambda p: (-scores.get(p, -math.inf) if head else 0, -sizes.get(p, 0), p))
        out.append(DuplicateGroup(ranked[0], ranked[1:], low, {p: scores[p] for p in members if p in scores},
                                  {p: sizes.get(p, 0) for p in members}))
    return out


def group_rows(groups: Sequence[DuplicateGroup]) -> list[dict]:
    """JSON-ready rows: one per group."""
    return [{"group": k, "keep": g.keep, "others": g.others, "similarity": round(g.similarity, 6),
             "members": [{"path": p, "size": g.sizes.get(p), **({"score": g.scores[p]} if p in g.scores else {})}
                         for p in g.members]}
            for k, g in enumerate(groups, 1)]


__all__ = ["DuplicateGroup", "EXACT_UP_TO", "METHODS", "ann_pairs", "exact_pairs", "find_duplicates", "group_pairs",
           "group_rows", "similar_pairs", "stored_vectors"]
