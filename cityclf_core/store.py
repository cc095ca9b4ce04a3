"""The embedding store: CLIP embeddings of a dataset in one SQLite file, for fast re-scoring.

Layout (one file, no server; WAL journal, so readers never block the writer):

    encoders    id, identity (content fingerprint of the CLIP), name, source, image_size, embed_dim
    embeddings  content (sha256 of the image file), encoder_id, policy, views, data (float32 [views, D])
    files       path, size, mtime_ns, content, width, height, status ('ok' | 'failed'), error, notes
    scores      path, head, combine, score, label, probs (JSON), updated

Embeddings are keyed by the file's *content*, the CLIP's identity and the crop
policy: an unchanged file is never embedded twice (a touched one is re-hashed,
not re-embedded; a renamed or duplicated one reuses its embeddings), a changed
one gets new embeddings, and the embeddings of one CLIP are never read as
another's. Each chunk of work is one transaction: a killed run leaves only
whole rows, and a rerun carries on from them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .crops import CropPolicy
from .errors import StoreError

SCHEMA_VERSION = 1

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
"""


def policy_key(policy: CropPolicy) -> str:
    """A stable text key for a resolved crop policy: 'whole' or 'tiles:672:1536:up'."""
    if not policy.tiling:
        return "whole"
    if policy.tile_size is None:
        raise StoreError("internal: crop policy must be resolved (tile size known) before it is stored")
    return f"tiles:{policy.tile_size}:{policy.max_side}:{'up' if policy.upscale else 'noup'}"


@dataclass(frozen=True)
class EncoderRow:
    id: int
    identity: str
    name: str
    source: str
    image_size: int
    embed_dim: int


@dataclass(frozen=True)
class FileRow:
    path: str
    size: int | None
    mtime_ns: int | None
    content: str | None
    status: str
    error: str | None


class EmbeddingStore:
    """A SQLite embedding store. Use as a context manager; one writer at a time."""

    def __init__(self, path: str | os.PathLike, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise StoreError(f"store {self.path} does not exist; create it with `cityclf embed ... --store {path}`")
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"store {self.path} is a folder; give a file name such as dataset.cityclf.db")
        if self.path.exists():
            with open(self.path, "rb") as f:
                magic = f.read(16)
            if magic and magic != b"SQLite format 3\x00":
                raise StoreError(f"{self.path} is not a cityclf store (not an SQLite file); choose another name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
        try:
            # a read-only connection belongs to one worker thread but is closed by the thread that made the pool
            self.db = sqlite3.connect(uri, uri=readonly, timeout=60, isolation_level=None,
                                      check_same_thread=not readonly)
            self.db.execute("PRAGMA busy_timeout = 60000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(SCHEMA)
            self._check_version(readonly)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} cannot be used as a store ({e})") from None

    def _check_version(self, readonly: bool) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            if readonly:
                raise StoreError(f"{self.path} is not a cityclf store")
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer cityclf (schema {row[0]}); upgrade cityclf")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ transactions

    def transaction(self):
        return _Transaction(self.db)

    # ------------------------------------------------------------ encoders

    def register_encoder(self, identity: str, name: str, source: str, image_size: int, embed_dim: int) -> EncoderRow:
        row = self.encoder_by_identity(identity)
        if row is not None:
            if (row.image_size, row.embed_dim) != (image_size, embed_dim):
                raise StoreError(f"store {self.path}: CLIP {identity} was recorded with another shape")
            return row
        with self.transaction():
            self.db.execute(
                "INSERT INTO encoders (identity, name, source, image_size, embed_dim, created) VALUES (?,?,?,?,?,?)",
                (identity, name, str(source), image_size, embed_dim, time.time()))
        return self.encoder_by_identity(identity)

    def encoders(self) -> list[EncoderRow]:
        return [EncoderRow(*r) for r in self.db.execute(
            "SELECT id, identity, name, source, image_size, embed_dim FROM encoders ORDER BY id")]

    def encoder_by_identity(self, identity: str) -> EncoderRow | None:
        r = self.db.execute("SELECT id, identity, name, source, image_size, embed_dim FROM encoders "
                            "WHERE identity = ?", (identity,)).fetchone()
        return EncoderRow(*r) if r else None

    def find_encoder(self, identity: str | None, source: str) -> EncoderRow:
        """The recorded CLIP with this identity, else the one recorded from this source; clear error if none."""
        if identity:
            row = self.encoder_by_identity(identity)
            if row is not None:
                return row
        matches = [e for e in self.encoders() if e.source == str(source)]
        if len(matches) == 1 and not identity:
            return matches[0]
        known = "; ".join(f"{e.name} ({e.source}, {e.identity})" for e in self.encoders()) or "none"
        if identity and matches:
            raise StoreError(
                f"store {self.path} holds embeddings of {source} with identity {matches[0].identity}, but the "
                f"CLIP there now is {identity}: the model changed. Embeddings of different models are never "
                "mixed; embed again into a new store.")
        raise StoreError(f"store {self.path} has no embeddings of CLIP {source} (it holds: {known}); "
                         f"run `cityclf embed ... --store {self.path}` with these models first")

    # ------------------------------------------------------------ files

    def file(self, path: str) -> FileRow | None:
        r = self.db.execute("SELECT path, size, mtime_ns, content, status, error FROM files WHERE path = ?",
                            (path,)).fetchone()
        return FileRow(*r) if r else None

    def files(self, paths: Iterable[str] | None = None, status: str | None = "ok") -> list[FileRow]:
        sql = "SELECT path, size, mtime_ns, content, status, error FROM files"
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        rows = [FileRow(*r) for r in self.db.execute(
            sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args)]
        if paths is not None:
            wanted = set(paths)
            rows = [r for r in rows if r.path in wanted]
        return rows

    def put_file(self, path: str, size: int | None, mtime_ns: int | None, content: str | None,
                 width: int | None = None, height: int | None = None, status: str = "ok",
                 error: str | None = None, notes: list[str] | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, content, width, height, status, error, notes, "
            "updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (path, size, mtime_ns, content, width, height, status, error,
             json.dumps(notes) if notes else None, time.time()))

    def move_file(self, old: str, new: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE OR REPLACE files SET path = ?, updated = ? WHERE path = ?", (new, time.time(), old))
            self.db.execute("UPDATE OR REPLACE scores SET path = ? WHERE path = ?", (new, old))

    # ------------------------------------------------------------ embeddings

    def known_contents(self, encoder_id: int, policy: str) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT content FROM embeddings WHERE encoder_id = ? AND policy = ?", (encoder_id, policy))}

    def put_embedding(self, content: str, encoder_id: int, policy: str, embeddings: np.ndarray) -> None:
        arr = np.ascontiguousarray(embeddings, dtype=np.float32)
        if arr.ndim != 2:
            raise StoreError("internal: embeddings must be [views, D]")
        self.db.execute("INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?,?)",
                        (content, encoder_id, policy, int(arr.shape[0]), arr.tobytes()))

    def count_embeddings(self, encoder_id: int | None = None) -> int:
        if encoder_id is None:
            return self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM embeddings WHERE encoder_id = ?", (encoder_id,)).fetchone()[0]

    def read_embeddings(self, paths: list[str], encoder: EncoderRow, policy: str
                        ) -> tuple[list[str], list[int], np.ndarray, list[str]]:
        """Stored embeddings of these files: (found paths, views per path, stacked [sum views, D], missing paths)."""
        found, counts, blobs, missing = [], [], [], []
        rows = {}
        for start in range(0, len(paths), 900):  # SQLite's limit on bound parameters
            part = paths[start : start + 900]
            marks = ",".join("?" * len(part))
            for path, views, data in self.db.execute(
                    f"SELECT f.path, e.views, e.data FROM files f JOIN embeddings e ON e.content = f.content "
                    f"WHERE f.path IN ({marks}) AND f.status = 'ok' AND e.encoder_id = ? AND e.policy = ?",
                    (*part, encoder.id, policy)):
                rows[path] = (views, data)
        for p in paths:
            if p in rows:
                views, data = rows[p]
                found.append(p)
                counts.append(views)
                blobs.append(data)
            else:
                missing.append(p)
        if blobs:
            joined = bytearray().join(blobs)  # one copy, writable (torch warns on read-only buffers)
            stacked = np.frombuffer(joined, dtype=np.float32).reshape(-1, encoder.embed_dim)
        else:
            stacked = np.zeros((0, encoder.embed_dim), dtype=np.float32)
        return found, counts, stacked, missing

    # ------------------------------------------------------------ imported shards

    def record_import(self, name: str, rows: int) -> None:
        """Note that shard `name` was imported. Call it inside the transaction that wrote the shard's rows,
        so that a shard is either wholly imported and recorded, or neither (meta rows: old stores stay readable).
        """
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (f"import:{name}", json.dumps({"rows": int(rows), "time": time.time()})))

    def imported_shards(self) -> set[str]:
        """Names of the shards recorded by record_import."""
        return {key[len("import:"):] for (key,) in self.db.execute(
            "SELECT key FROM meta WHERE key >= 'import:' AND key < 'import;'")}

    # ------------------------------------------------------------ scores

    def put_scores(self, rows: Iterable[tuple[str, str, str, float, str, str | None]]) -> None:
        now = time.time()
        self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?)",
                            [(*r, now) for r in rows])

    def scores(self, heads: list[str] | None = None, combine: str | None = None) -> dict[str, dict[str, tuple]]:
        """{path: {head: (score, label, probs)}} for the stored scores."""
        sql = "SELECT path, head, score, label, probs FROM scores"
        where, args = [], []
        if combine:
            where.append("combine = ?")
            args.append(combine)
        out: dict[str, dict[str, tuple]] = {}
        for path, head, score, label, probs in self.db.execute(
                sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args):
            if heads is None or head in heads:
                out.setdefault(path, {})[head] = (score, label, json.loads(probs) if probs else None)
        return out

    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "files": q("SELECT COUNT(*) FROM files WHERE status = 'ok'"),
            "failed": q("SELECT COUNT(*) FROM files WHERE status = 'failed'"),
            "embeddings": q("SELECT COUNT(*) FROM embeddings"),
            "scores": q("SELECT COUNT(*) FROM scores"),
            "encoders": [e.__dict__ for e in self.encoders()],
        }

    def export_numpy(self, out: str | os.PathLike, encoder: EncoderRow, policy: str) -> int:
        """Write an .npz: paths [N], offsets [N+1], embeddings [total views, D] (float32), and the CLIP."""
        paths = [f.path for f in self.files()]
        found, counts, stacked, _ = self.read_embeddings(paths, encoder, policy)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        np.savez(out, paths=np.array(found, dtype=str), offsets=offsets, embeddings=stacked,
                 clip_identity=encoder.identity, clip_source=encoder.source, policy=policy)
        return len(found)


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False


__all__ = ["EmbeddingStore", "EncoderRow", "FileRow", "policy_key"]
