"""The writer stage of embedding a dataset: one store transaction per chunk of CLIP output.

A file's row is written only once all its embeddings are in, in the same
transaction as the last of them: a killed run leaves whole rows, and a rerun
carries on from them.
"""

from __future__ import annotations

from typing import Callable

import torch

from .finite import EMBEDDING, finite_array
from .reader import Known, Prepared

OnFile = Callable[[str, "str | None"], None]


class StoreWriter:
    """Commits embeddings as chunks finish, and the file rows of items now complete."""

    def __init__(self, store, rows: list, keys: list[str], known: Known, report, on_file: OnFile | None = None):
        self.store, self.rows, self.keys, self.known = store, rows, keys, known
        self.report, self.on_file = report, on_file
        self._waiting: dict[int, tuple[Prepared, set[int]]] = {}

    def expect(self, item: Prepared) -> None:
        """`item`'s views are on their way through the encoders."""
        self._waiting[item.index] = (item, set(item.views) | set(item.aliases))

    def write(self, done_per_pass: list[list[tuple[int, torch.Tensor]]]) -> None:
        """Commit finished embeddings ([(item index, [views, D])] per CLIP pass)."""
        finished: list[Prepared] = []
        broken: list[Prepared] = []
        with self.store.transaction():
            for pi, done in enumerate(done_per_pass):
                for index, emb in done:
                    if index not in self._waiting:
                        continue  # an earlier pass of this file gave NaN: it is recorded as failed already
                    item, missing = self._waiting[index]
                    arr = emb.numpy()
                    if not finite_array(arr):  # never stored: reported like a bad file
                        item.error = EMBEDDING
                        self.store.put_file(item.path, item.size, item.mtime_ns, None, status="failed",
                                            error=item.error)
                        self._waiting.pop(index)
                        broken.append(item)
                        continue
                    for target in [pi, *(j for j, src in item.aliases.items() if src == pi)]:
                        self.store.put_embedding(item.content, self.rows[target].id, self.keys[target], arr)
                        missing.discard(target)
                        self.known.add(target, item.content)
                    if not missing:
                        finished.append(item)
            for item in finished:
                self.store.put_file(item.path, item.size, item.mtime_ns, item.content, item.width, item.height,
                                    notes=item.notes)
                self._waiting.pop(item.index)
        for item in broken:
            self.report.failed.append((item.path, item.error))
            self._done(item.path, item.error)
        for item in finished:
            self.report.embedded += 1
            self.report.notes += [(item.path, note) for note in item.notes]
            self._done(item.path, None)

    def failed(self, item: Prepared) -> None:
        with self.store.transaction():
            self.store.put_file(item.path, item.size, item.mtime_ns, None, status="failed", error=item.error)
        self.report.failed.append((item.path, item.error))
        self._done(item.path, item.error)

    def reused(self, item: Prepared) -> None:
        """Nothing to compute: record a touched, renamed or duplicate file's path."""
        if not item.unchanged:
            with self.store.transaction():
                self.store.put_file(item.path, item.size, item.mtime_ns, item.content, item.width, item.height)
        self.report.reused += 1
        self._done(item.path, None)

    def _done(self, path: str, error: str | None) -> None:
        if self.on_file:
            self.on_file(path, error)
