"""The SQLite embedding store: CLIP embeddings of a dataset in one file, for fast re-scoring. All SQL lives here.

    schema.py  the tables, opening a store (checks, migrations), transactions
    files.py   CLIPs, files and their embeddings; imported Parquet shards
    scores.py  heads' scores, and selecting files by them
    moves.py   the move journal
    whole.py   statistics, exports, merging
    sql.py     shared: errors worded for users, paths as stored

`EmbeddingStore` is these parts in one class; it implements `store.protocol.Store`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable

from ..lock import store_writer
from .files import FilesAndEmbeddings
from .moves import MoveJournal
from .schema import SCHEMA_VERSION, Connection
from .scores import Scores, label_expr
from .sql import ReadOnlyStore, store_error
from .whole import WholeStore, set_name


class EmbeddingStore(Connection, FilesAndEmbeddings, Scores, MoveJournal, WholeStore):
    """A SQLite embedding store. Use as a context manager; one writer at a time."""


def merge_stores(target: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Merge `sources` into `target` all or nothing: every source is checked first, the merge is done on a
    copy (`TARGET.merging`) and renamed over the target only when it finished; a failure leaves the target
    as it was. The target's lock is held throughout (store/lock.py), so no other writer's rows are lost."""
    sources = list(sources)
    for src in sources:  # a missing or foreign part fails here, before anything is written
        EmbeddingStore(src, create=False, readonly=True).close()
    target = Path(target)
    with store_writer(target):  # made (empty) if missing, so that two merges into a new store wait too
        return _merge_locked(target, sources)


def _merge_locked(target: Path, sources: list) -> dict[str, int]:
    tmp = target.with_name(target.name + ".merging")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)  # our own temporary file from an interrupted merge
    try:
        if target.stat().st_size:
            with EmbeddingStore(target, create=False) as current:
                copy = sqlite3.connect(str(tmp))
                try:
                    current.db.backup(copy)
                finally:
                    copy.close()
        with EmbeddingStore(tmp) as merged:
            added = merged.merge_from(sources)
        os.replace(tmp, target)
    except sqlite3.Error as e:  # on the copy (a full disk, say): the target is as it was
        raise store_error(target, e, f"merging into a copy of it ({tmp})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return added


__all__ = ["SCHEMA_VERSION", "EmbeddingStore", "ReadOnlyStore", "label_expr", "merge_stores", "set_name", "store_error"]
