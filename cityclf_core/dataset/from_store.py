"""Results from a store: heads on stored embeddings (no CLIP loaded), and saving them; images embedded into a store
first (only what it lacks), then scored from it. Stored scores back as results: stored_rows.py, which needs no torch."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import torch

from ..scoring.pipeline import Group, ScoringModel, head_scores
from ..scoring.results import HeadResult
from ..store import StoredScore
from ..store.lock import store_writer
from .blocks import ScoreOptions
from .embed import EmbedReport, clip_passes, embed_files
from .finite import OUTPUT, STORED, finite_results, finite_views
from .stored_rows import Rows, stored_results, stored_row


def score_store(
    store,
    model: ScoringModel,
    paths: Sequence[str] | None = None,
    combine: str = "mean",
    tiling: str = "auto",
    upscale: bool = True,
    chunk: int = 8192,
) -> Iterator[tuple[Rows, list[tuple[str, str]]]]:
    """Score stored embeddings chunk by chunk: yields (results in path order, [(path, why not scored)]).

    With `paths` None, every stored file, read from the store a chunk at a time (memory: one chunk)."""
    if paths is not None:
        wanted = [r.path for r in store.files(paths)]
        have = set(wanted)
        absent = [(p, "not in the store (not embedded yet, or failed)") for p in paths if p not in have]
        if absent:
            yield [], absent
        parts = (wanted[start : start + chunk] for start in range(0, len(wanted), chunk))
    else:
        parts = store.file_paths(chunk)
    groups: list[Group] = model.groups(tiling, upscale)
    encoder_rows = {}
    for part in parts:
        per_path: dict[str, dict[str, HeadResult]] = {p: {} for p in part}
        missing: dict[str, str] = {}
        for g in groups:
            key = (g.encoder.identity, g.encoder.source)
            row = encoder_rows.get(key) or encoder_rows.setdefault(key, store.find_encoder(*key))
            found, counts, stacked, absent = store.read_embeddings(part, row, g.clip.key)
            for p in absent:
                missing.setdefault(p, f"no stored embeddings of {row.name} with {g.policy.describe()}; "
                                      "run cityclf embed with these models")
            if not found:
                continue
            for p, ok in zip(found, finite_views(stacked, counts)):
                if not ok:
                    missing.setdefault(p, STORED)
            scores = head_scores(g.bindings, torch.from_numpy(stacked), counts, combine)
            for i, p in enumerate(found):
                for s in scores:
                    per_path[p][s.binding.name] = s.result(i)
        order = model.names
        results = []
        for p in part:
            if p in missing:
                continue
            result = {n: per_path[p][n] for n in order}
            if finite_results(result):
                results.append((p, result))
            else:
                missing[p] = OUTPUT
        yield results, sorted(missing.items())


def embed_then_score(
    store_path: str | os.PathLike,
    model: ScoringModel,
    paths: Sequence[str | os.PathLike],
    options: ScoreOptions,
    on_file: Callable[[str, str | None], None] | None = None,
    on_embedded: Callable[[EmbedReport], None] | None = None,
    on_absent: Callable[[str, str], None] | None = None,
) -> Rows:
    """Embed into the store at `store_path` what it lacks of `paths` for `model`'s CLIP passes (nothing, the
    second time), then score them from the stored embeddings: [(absolute path, results)] in path order.

    The store's writer lock is held throughout. `on_file(path, error)` is told each file as embed_files tells
    it; `on_embedded(report)` once embedding is done; `on_absent(path, why)` each file that could not be scored
    (files that failed to embed are not scored, and not told again).
    """
    from ..store import EmbeddingStore  # the SQLite backend: only jobs that open a store load it, not the nodes

    absolute = [os.path.abspath(p) for p in paths]
    rows: Rows = []
    with EmbeddingStore(store_path) as store, store_writer(store.path):
        report = embed_files(store, clip_passes(model, options.tiling, options.upscale), absolute,
                             batch_size=options.batch_size, workers=options.workers, max_pixels=options.max_pixels,
                             on_file=on_file)
        if on_embedded is not None:
            on_embedded(report)
        failed = {p for p, _ in report.failed}
        for results, absent in score_store(store, model, [p for p in absolute if p not in failed], options.combine,
                                           options.tiling, options.upscale):
            for path, why in absent:
                if on_absent is not None:
                    on_absent(path, why)
            rows += results
    return rows


def save_results(store, rows: Rows, combine: str) -> None:
    """Keep these results in the store (one transaction), each as its head's kind stores it."""
    with store.transaction():
        store.put_scores((path, name, combine, StoredScore(*r.kind.to_stored(r), r.arch))
                         for path, res in rows for name, r in res.items())


__all__ = ["Rows", "save_results", "score_store", "stored_results", "stored_row"]
