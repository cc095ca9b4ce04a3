"""Embedding stores: CLIP embeddings of a dataset, kept for fast re-scoring.

    protocol.py        Store: every method the jobs, CLI, engines and pixiv call (a second backend implements it)
    sqlite/            EmbeddingStore: the SQLite backend, one file, WAL journal (all SQL lives there), one
                       module per concern: schema, files and embeddings, scores, the move journal, whole stores
    rows.py            the rows every backend hands out
    stored_encoder.py  StoredEncoder: a stored CLIP, for scoring without its weights
    lock.py            one embedding run per store at a time
"""

from .protocol import Store
from .rows import EncoderRow, FileRow, PolicyInfo, PruneReport, StoredScore
from .sqlite import SCHEMA_VERSION, EmbeddingStore, ReadOnlyStore, merge_stores
from .stored_encoder import StoredEncoder

__all__ = ["SCHEMA_VERSION", "EmbeddingStore", "EncoderRow", "FileRow", "PolicyInfo", "PruneReport", "ReadOnlyStore",
           "Store", "StoredEncoder", "StoredScore", "merge_stores"]
