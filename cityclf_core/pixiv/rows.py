"""Stored embeddings read per batch, so that training memory is bounded by the batch, not the dataset.

`StoredViews` stands where the Trainer expects a [n, D] tensor of views: it
answers `views[index_tensor]` by reading just those rows from the embedding
store (one whole-image view per work), and `.to(device)` by remembering the
device. It holds only the content hashes (64 bytes per work) and a read-only
handle on the store, opened at the first read.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import StoreError
from ..store import EmbeddingStore, EncoderRow, Store


class StoredViews:
    def __init__(self, store_path, encoder: EncoderRow, policy: str, contents: np.ndarray):
        self.store_path, self.encoder, self.policy, self.dim = str(store_path), encoder, policy, encoder.embed_dim
        self.contents = np.asarray(contents, dtype="S64")
        self.device = torch.device("cpu")
        self._store: Store | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.contents), self.dim)

    def __len__(self) -> int:
        return len(self.contents)

    def to(self, device, *args, **kwargs) -> "StoredViews":
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        return self

    def _reader(self) -> Store:
        if self._store is None:
            self._store = EmbeddingStore(self.store_path, create=False, readonly=True)
        return self._store

    def rows(self, index) -> np.ndarray:
        """[len(index), D] float32 embeddings of these works, in this order."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        wanted = self.contents[idx]
        unique = list(dict.fromkeys(wanted.tolist()))
        found = {content.encode(): emb for content, emb in self._reader().embeddings_by_content(
            [c.decode() for c in unique], self.encoder, self.policy).items()}
        for content, emb in found.items():
            if emb.shape[0] != 1:
                raise StoreError(f"store {self.store_path}: {content.decode()} has {emb.shape[0]} views; popularity "
                                 "heads train on whole-image embeddings (one view per image)")
        missing = [c for c in unique if c not in found]
        if missing:
            raise StoreError(f"store {self.store_path}: the embeddings of {len(missing)} file(s) disappeared while "
                             "training; do not change the store during a run")
        if not len(wanted):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([found[c] for c in wanted.tolist()])

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(self.rows(index)).to(self.device)

    def chunks(self, size: int = 4096):
        """Yield (start, [rows, D] tensor) over all works in order."""
        for start in range(0, len(self), size):
            yield start, self[np.arange(start, min(start + size, len(self)))]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


__all__ = ["StoredViews"]
