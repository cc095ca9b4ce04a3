"""Embedding stores: CLIP embeddings of a dataset, kept for fast re-scoring.

    protocol.py        Store: every method the jobs, CLI, engines and pixiv call (a second backend implements it)
    sqlite/            EmbeddingStore: the SQLite backend, one file, WAL journal (all SQL lives there), one
                       module per concern: schema, files and embeddings, scores, the move journal, whole stores
    rows.py            the rows every backend hands out
    stored_encoder.py  StoredEncoder: a stored CLIP, for scoring without its weights
    lock.py            one embedding run per store at a time
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: where each name lives; imported on first use, so that a command that only takes the store's lock (or reads
#: its rows) does not import the SQLite backend, numpy or torch (StoredEncoder is a torch Encoder)
_EXPORTS = {
    "Store": "protocol",
    "EncoderRow": "rows", "FileRow": "rows", "PolicyInfo": "rows", "PruneReport": "rows", "StoredScore": "rows",
    "SCHEMA_VERSION": "sqlite", "EmbeddingStore": "sqlite", "ReadOnlyStore": "sqlite", "merge_stores": "sqlite",
    "StoredEncoder": "stored_encoder",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
