"""Per-image results after an engine run: the scores its workers stored, the rest from stored embeddings."""

from __future__ import annotations

from typing import Iterator, Sequence

from ..dataset.from_store import save_results, score_store
from ..kinds import get_kind
from ..scoring.pipeline import ScoringModel
from ..scoring.results import HeadResult
from ..store import Store


def results_after_run(
    store: Store,
    model: ScoringModel,
    paths: Sequence[str],
    fresh: set[str],
    combine: str = "mean",
    tiling: str = "auto",
    upscale: bool = True,
) -> Iterator[tuple[list[tuple[str, dict[str, HeadResult]]], list[tuple[str, str]]]]:
    """(results in path order, [(path, why not scored)]), like one block of dataset.score_store.

    Files in `fresh` were scored by the engine's workers in this run (their
    scores are in the store); every other file (unchanged, a duplicate, or
    resumed from an earlier run) is scored here from its stored embeddings, and
    those scores are stored too.
    """
    names = model.names
    per_path: dict[str, dict[str, HeadResult]] = {}
    stored = store.scores(names, combine) if fresh else {}
    for p in paths:
        if p in fresh and all(n in stored.get(p, {}) for n in names):
            per_path[p] = {n: get_kind(stored[p][n].kind).from_stored(n, *stored[p][n][:3]) for n in names}
    rest = [p for p in paths if p not in per_path]
    problems: list[tuple[str, str]] = []
    if rest:
        for results, missing in score_store(store, model, rest, combine, tiling, upscale):
            save_results(store, results, combine)
            per_path.update(results)
            problems += missing
    yield [(p, per_path[p]) for p in sorted(per_path)], problems


__all__ = ["results_after_run"]
