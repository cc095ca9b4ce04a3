"""Embedding a dataset into a store: reader (threads) -> encoder (chunked CLIP) -> writer, driven by a short loop.

    FileReader   reader.py   stat / look up / hash / decode / crop, in worker threads, ahead of the model
    ChunkedEncoder           embedding.py: views of many files in chunks through each CLIP pass
    StoreWriter  writer.py   one transaction per chunk

Only what is missing is computed; an interrupted run keeps everything it
committed, and a rerun carries on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import StoreError
from ..scoring.embedding import ChunkedEncoder, ClipPass, default_batch_size
from ..scoring.encoders import TimedEncoder
from ..scoring.images import DEFAULT_MAX_PIXELS, ordered_map
from .reader import FileReader, Known
from .writer import StoreWriter


@dataclass
class EmbedReport:
    total: int = 0
    embedded: int = 0  # files whose embeddings were computed now
    reused: int = 0  # unchanged, re-hashed or duplicate files: nothing computed
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    views: int = 0
    forward_seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{self.total} file(s)", f"{self.embedded} embedded", f"{self.reused} already in the store"]
        if self.failed:
            parts.append(f"{len(self.failed)} skipped")
        return ", ".join(parts)


def clip_passes(model, tiling: str = "auto", upscale: bool = True) -> list[ClipPass]:
    """The CLIP passes a ScoringModel's heads need (one per encoder and effective crop policy)."""
    return [g.clip for g in model.groups(tiling, upscale)]


def register_passes(store, passes: Sequence[ClipPass]) -> list:
    """Each pass's CLIP recorded in the store (its row)."""
    rows = []
    for p in passes:
        enc = p.encoder
        if enc.embed_dim is None:
            raise StoreError(f"CLIP {enc.name}: its embedding size is unknown until it runs; use a transformers CLIP")
        rows.append(store.register_encoder(enc.identity, enc.name, enc.source, enc.image_size, enc.embed_dim))
    return rows


def embed_files(
    store,
    passes: Sequence[ClipPass],
    paths: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    workers: int = 2,
    prefetch: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_file: Callable[[str, str | None], None] | None = None,
) -> EmbedReport:
    """Make sure every file has stored embeddings for every CLIP pass; compute only what is missing.

    Decoding, hashing and cropping run in `workers` threads (Pillow and torch
    release the GIL) ahead of the model; the main thread only runs CLIP and
    writes. `on_file(path, error)` is called once per file.
    """
    passes = list(passes)
    report = EmbedReport(total=len(paths))
    rows = register_passes(store, passes)
    keys = [p.key for p in passes]
    known = Known([store.known_contents(row.id, key) for row, key in zip(rows, keys)])
    reader = FileReader(store, passes, known, max_pixels)
    writer = StoreWriter(store, rows, keys, known, report, on_file)
    size = batch_size or (default_batch_size(passes[0].encoder.device) if passes else 8)
    timers = [TimedEncoder(p.encoder) for p in passes]
    chunkers = [ChunkedEncoder(timer, size) for timer in timers]
    try:
        for item in ordered_map(lambda job: reader.read(*job), enumerate(str(p) for p in paths), max(1, workers),
                                prefetch or max(4, 2 * workers)):
            if item.error:
                writer.failed(item)
            elif not item.views:
                writer.reused(item)
            else:
                writer.expect(item)
                done = [[] for _ in passes]
                for i, views in item.views.items():
                    done[i] = chunkers[i].add(item.index, views)
                item.views = {}  # the chunkers hold them now
                if any(done):
                    writer.write(done)
        final = [c.flush() for c in chunkers]
        if any(final):
            writer.write(final)
    finally:
        reader.close()
        report.views = sum(t.views for t in timers)
        report.forward_seconds = sum(t.seconds for t in timers)
    return report


__all__ = ["EmbedReport", "clip_passes", "embed_files", "register_passes"]
