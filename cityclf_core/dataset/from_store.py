"""Results from a store: heads on stored embeddings (no CLIP loaded), stored scores back as results, and saving them."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..kinds import get_kind
from ..pipeline import Group, ScoringModel, head_scores
from ..results import HeadResult
from ..store import StoredScore

Rows = list[tuple[str, dict[str, HeadResult]]]


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
            key = (g.encoder.identity, getattr(g.encoder, "source", g.encoder.name))
            row = encoder_rows.get(key) or encoder_rows.setdefault(key, store.find_encoder(*key))
            found, counts, stacked, absent = store.read_embeddings(part, row, g.clip.key)
            for p in absent:
                missing.setdefault(p, f"no stored embeddings of {row.name} with {g.policy.describe()}; "
                                      "run cityclf embed with these models")
            if not found:
                continue
            scores = head_scores(g.bindings, torch.from_numpy(stacked), counts, combine)
            for i, p in enumerate(found):
                for s in scores:
                    per_path[p][s.binding.name] = s.result(i)
        order = model.names
        results = [(p, {n: per_path[p][n] for n in order}) for p in part if p not in missing]
        yield results, sorted(missing.items())


def save_results(store, rows: Rows, combine: str) -> None:
    """Keep these results in the store (one transaction), each as its head's kind stores it."""
    with store.transaction():
        store.put_scores((path, name, combine, StoredScore(*r.kind.to_stored(r), r.arch))
                         for path, res in rows for name, r in res.items())


def stored_results(store, heads: list[str] | None, combine: str) -> Rows:
    """The stored scores as results, per path: each rebuilt by its head's kind."""
    rows = []
    for path, per_head in store.scores(heads, combine).items():
        rows.append((path, {name: get_kind(s.kind).from_stored(name, s.score, s.label, s.extra)
                            for name, s in per_head.items()}))
    return rows


__all__ = ["Rows", "save_results", "score_store", "stored_results"]
