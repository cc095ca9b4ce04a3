"""Stored embeddings read per batch, so that training memory is bounded by the batch, not the dataset.

`StoredViews` stands where the Trainer expects a [n, D] tensor of views: it
answers `views[index_tensor]` by reading just those rows from the embedding
store (one whole-image view per work), and `.to(device)` by remembering the
device. It holds only the content hashes (64 bytes per work).
"""

from __future__ import annotations

import sqlite3

import numpy as np
import torch

from ..errors import StoreError

READ_ROWS = 900  # SQLite's limit on bound parameters, with room


class StoredViews:
    def __init__(self, store_path, encoder_id: int, policy: str, contents: np.ndarray, dim: int):
        self.store_path, self.encoder_id, self.policy, self.dim = str(store_path), encoder_id, policy, dim
        self.contents = np.asarray(contents, dtype="S64")
        self.device = torch.device("cpu")
        self._db: sqlite3.Connection | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.contents), self.dim)

    def __len__(self) -> int:
        return len(self.contents)

    def to(self, device, *args, **kwargs) -> "StoredViews":
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        return self

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, check_same_thread=False)
        return self._db

    def rows(self, index) -> np.ndarray:
        """[len(index), D] float32 embeddings of these works, in this order."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        wanted = self.contents[idx]
        unique = list(dict.fromkeys(wanted.tolist()))
        found: dict[bytes, np.ndarray] = {}
        db = self._connection()
        for start in range(0, len(unique), READ_ROWS):
            part = [c.decode() for c in unique[start: start + READ_ROWS]]
            marks = ",".join("?" * len(part))
            for content, views, data in db.execute(
                    f"SELECT content, views, data FROM embeddings WHERE encoder_id = ? AND policy = ? "
                    f"AND content IN ({marks})", (self.encoder_id, self.policy, *part)):
                if views != 1:
                    raise StoreError(f"store {self.store_path}: {content} has {views} views; popularity heads "
                                     "train on whole-image embeddings (one view per image)")
                found[content.encode()] = np.frombuffer(data, dtype=np.float32)
        missing = [c for c in unique if c not in found]
        if missing:
            raise StoreError(f"store {self.store_path}: the embeddings of {len(missing)} file(s) disappeared while "
                             "training; do not change the store during a run")
        return np.stack([found[c] for c in wanted.tolist()]) if len(wanted) else np.zeros((0, self.dim), np.float32)

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(self.rows(index)).to(self.device)

    def chunks(self, size: int = 4096):
        """Yield (start, [rows, D] tensor) over all works in order."""
        for start in range(0, len(self), size):
            yield start, self[np.arange(start, min(start + size, len(self)))]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


__all__ = ["StoredViews"]
