"""The SQLite store's schema, opening a store (checks, migrations) and its transactions.

Layout (one file, no server; WAL journal, so readers never block the writer):

    encoders    id, identity (content fingerprint of the CLIP), name, source, image_size, embed_dim
    embeddings  content (sha256 of the image file), encoder_id, policy, views, data (float32 [views, D])
    files       path, size, mtime_ns, content, width, height, status ('ok' | 'failed'), error, notes
    scores      path, head, combine, score, label, probs (JSON), updated, kind (the head's kind; added in
                schema 2, NULL in older stores: read as a classifier when probs are stored, else a score)
    moves       source, target, image, planned: a move in progress (the journal; see dataset/journal.py)
    meta        schema_version, created, and import:NAME for each imported Parquet shard

Paths are stored as text when they are valid UTF-8 (every path of older
stores), else as the file system's bytes in a BLOB (a name that is not UTF-8
on Linux), so every path is kept exactly; `sql.to_db` and `sql.from_db` convert.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager
from urllib.request import pathname2url

from ...errors import StoreError
from .sql import DAMAGE, Transaction, read_only_error, store_error, writable_problem

if TYPE_CHECKING:
    from ..protocol import Store

SCHEMA_VERSION = 2  # 2: scores.kind

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS encoders (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    image_size INTEGER NOT NULL,
    embed_dim INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    content TEXT NOT NULL,
    encoder_id INTEGER NOT NULL REFERENCES encoders(id),
    policy TEXT NOT NULL,
    views INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (content, encoder_id, policy)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    content TEXT,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL,
    error TEXT,
    notes TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_content ON files(content);
CREATE TABLE IF NOT EXISTS scores (
    path TEXT NOT NULL,
    head TEXT NOT NULL,
    combine TEXT NOT NULL,
    score REAL NOT NULL,
    label TEXT NOT NULL,
    probs TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (path, head, combine)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scores_rank ON scores(head, combine, score);
"""
#: created by the first move (not on open: opening a store never writes to it unasked)
MOVES = """
CREATE TABLE IF NOT EXISTS moves (
    source TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    image INTEGER NOT NULL,
    planned REAL NOT NULL
) WITHOUT ROWID;
"""


class Connection:
    """Opening a store: checks, schema, migrations; transactions, read-only handles, closing."""

    def __init__(self, path: str | os.PathLike, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if not self.path.exists() and not create:
            raise StoreError(f"store {self.path} does not exist; create it with `cityclf embed ... --store {path}`")
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"store {self.path} is a folder; give a file name such as dataset.cityclf.db")
        if self.path.exists():
            try:
                with open(self.path, "rb") as f:
                    magic = f.read(16)
            except OSError as e:
                raise StoreError(f"store {self.path} cannot be read ({e.strerror or e}); check its permissions") \
                    from None
            if magic and magic != b"SQLite format 3\x00":
                raise StoreError(f"{self.path} is not a cityclf store (not an SQLite file); choose another name")
        if not readonly:
            if self.path.parent.exists() or not create:
                why = writable_problem(self.path)
                if why:
                    raise read_only_error(self.path, why)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise read_only_error(self.path, f"its folder cannot be made: {e.strerror or e}") from None
        try:
            self.db = self._connect(readonly)
            self.db.execute("PRAGMA busy_timeout = 60000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(SCHEMA)
            self._check_version(readonly)
            self._score_columns = {r[1] for r in self.db.execute("PRAGMA table_info(scores)")}
            if not readonly and "kind" not in self._score_columns:
                self._migrate_to_2()
            self._check_encoders()
        except sqlite3.DatabaseError as e:
            if any(word in str(e).lower() for word in DAMAGE):
                raise store_error(self.path, e, "opening it") from None
            if "readonly" in str(e).replace(" ", "").lower():
                raise read_only_error(self.path, str(e)) from None
            raise StoreError(f"{self.path} cannot be used as a store ({e})") from None

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        # a read-only connection belongs to one worker thread but is closed by the thread that made the pool
        if not readonly:
            return sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        uri = f"file:{pathname2url(str(self.path.absolute()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            if writable_problem(self.path) is None:
                raise
        # on read-only media SQLite cannot make the WAL index beside the file: read it as immutable
        return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=60, isolation_level=None,
                               check_same_thread=False)

    def _check_encoders(self) -> None:
        """Damage that SQLite does not notice may still show as impossible rows: refuse those."""
        for row in self.db.execute("SELECT id, identity, name, source, image_size, embed_dim FROM encoders"):
            if any(v is None for v in row) or not isinstance(row[4], int) or not isinstance(row[5], int):
                raise StoreError(f"store {self.path} is damaged (a CLIP record reads {row}); nothing was changed "
                                 "in it. Restore it from a backup.")

    def _check_version(self, readonly: bool) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            if readonly:
                raise StoreError(f"{self.path} is not a cityclf store")
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer cityclf (schema {row[0]}); upgrade cityclf")

    def _migrate_to_2(self) -> None:
        """Schema 1 -> 2: scores record their head's kind (older rows keep NULL: see scores())."""
        with self.transaction():
            self.db.execute("ALTER TABLE scores ADD COLUMN kind TEXT")
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        self._score_columns.add("kind")

    def reader(self) -> "Store":
        """A read-only handle on the same store, for another thread."""
        return type(self)(self.path, create=False, readonly=True)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def transaction(self) -> ContextManager:
        """One SQLite transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error) for the block."""
        return Transaction(self.db, self.path)

    def _count(self, table: str) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


__all__ = ["MOVES", "SCHEMA", "SCHEMA_VERSION", "Connection"]
