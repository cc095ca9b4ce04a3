"""The SQLite embedding store: CLIP embeddings of a dataset in one file, for fast re-scoring.

Layout (one file, no server; WAL journal, so readers never block the writer):

    encoders    id, identity (content fingerprint of the CLIP), name, source, image_size, embed_dim
    embeddings  content (sha256 of the image file), encoder_id, policy, views, data (float32 [views, D])
    files       path, size, mtime_ns, content, width, height, status ('ok' | 'failed'), error, notes
    scores      path, head, combine, score, label, probs (JSON), updated, kind (the head's kind; added in
                schema 2, NULL in older stores: read as a classifier when probs are stored, else a score)
    moves       source, target, image, planned: a move in progress (the journal; see dataset/journal.py)

Paths are stored as text when they are valid UTF-8 (every path of older
stores), else as the file system's bytes in a BLOB (a name that is not UTF-8
on Linux), so every path is kept exactly; `_to_db` and `_from_db` convert.

Embeddings are keyed by the file's *content*, the CLIP's identity and the crop
policy: an unchanged file is never embedded twice (a touched one is re-hashed,
not re-embedded; a renamed or duplicated one reuses its embeddings), a changed
one gets new embeddings, and the embeddings of one CLIP are never read as
another's. Each chunk of work is one transaction: a killed run leaves only
whole rows, and a rerun carries on from them.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.request import pathname2url

import numpy as np

from ..crops import CropPolicy
from ..errors import StoreError
from ..pathtext import safe_text
from .rows import EncoderRow, FileRow, PolicyInfo, PruneReport, StoredScore

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
#: SQLite's words for a file that is not (or no longer) a sound database
DAMAGE = ("malformed", "not a database", "corrupt", "disk i/o error")


def store_error(path: Path, e: sqlite3.Error, doing: str = "") -> StoreError:
    """A clear StoreError for an SQLite error on the store at `path`."""
    text = str(e)
    if any(word in text.lower() for word in DAMAGE):
        return StoreError(
            f"store {path} is damaged ({text}){' while ' + doing if doing else ''}; nothing was changed in it. "
            f"Restore it from a backup, or save what can be read with `sqlite3 {path} .recover | sqlite3 NEW.db` "
            "and use NEW.db")
    if "readonly" in text.replace(" ", "").lower():
        return _read_only(path, text)
    if "locked" in text.lower() or "busy" in text.lower():
        return StoreError(f"store {path} is busy: another program holds it ({text}); try again when it is done")
    return StoreError(f"store {path} cannot be used ({text})")


class ReadOnlyStore(StoreError):
    """A store that this command would have to write, but cannot."""


def _read_only(path: Path, why: str) -> StoreError:
    return ReadOnlyStore(
        f"store {path} is read-only ({why}); nothing was changed. This command writes to the store: make it "
        "writable (and its folder: SQLite adds -wal and -shm files beside it), or copy it somewhere writable. "
        "query (without --move), grid, export and store-info only read it.")


def _writable_problem(path: Path) -> str | None:
    """Why SQLite could not write the store at `path` (the file or its folder read-only), or None."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return "the file cannot be written"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} cannot be written"
    return None


def _to_db(path: str):
    """A path as stored: text when it is valid UTF-8, else its bytes (lossless; see the module's notes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _from_db(value) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _text(message: str | None) -> str | None:
    """Free text (an error message) that may quote a non-UTF-8 name: stored with that name's bytes as \\xNN."""
    return None if message is None else safe_text(message)


def policy_key(policy: CropPolicy) -> str:
    """A stable text key for a resolved crop policy: 'whole' or 'tiles:672:1536:up'."""
    try:
        return policy.key
    except Exception as e:  # noqa: BLE001  (an unresolved policy)
        raise StoreError(str(e)) from None


class EmbeddingStore:
    """A SQLite embedding store. Use as a context manager; one writer at a time."""

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
                why = _writable_problem(self.path)
                if why:
                    raise _read_only(self.path, why)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _read_only(self.path, f"its folder cannot be made: {e.strerror or e}") from None
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
                raise _read_only(self.path, str(e)) from None
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
            if _writable_problem(self.path) is None:
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

    def reader(self) -> "EmbeddingStore":
        """A read-only handle on the same store, for another thread."""
        return EmbeddingStore(self.path, create=False, readonly=True)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ transactions

    def transaction(self):
        return _Transaction(self.db, self.path)

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
                            (_to_db(path),)).fetchone()
        return FileRow(_from_db(r[0]), *r[1:]) if r else None

    def files(self, paths: Iterable[str] | None = None, status: str | None = "ok") -> list[FileRow]:
        sql = "SELECT path, size, mtime_ns, content, status, error FROM files"
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        rows = [FileRow(_from_db(r[0]), *r[1:]) for r in self.db.execute(
            sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args)]
        if paths is not None:
            wanted = set(paths)
            rows = [r for r in rows if r.path in wanted]
        return rows

    def file_paths(self, block: int = 8192) -> Iterator[list[str]]:
        """The paths of the files stored as embedded ('ok'), in path order, a block at a time."""
        last = ""
        while True:
            part = [r[0] for r in self.db.execute(
                "SELECT path FROM files WHERE status = 'ok' AND path > ? ORDER BY path LIMIT ?", (last, block))]
            if not part:
                return
            last = part[-1]
            yield part

    def put_file(self, path: str, size: int | None, mtime_ns: int | None, content: str | None,
                 width: int | None = None, height: int | None = None, status: str = "ok",
                 error: str | None = None, notes: list[str] | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, content, width, height, status, error, notes, "
            "updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (_to_db(path), size, mtime_ns, content, width, height, status, _text(error),
             json.dumps(notes) if notes else None, time.time()))

    def restat_file(self, path: str, size: int, mtime_ns: int) -> None:
        """A file rewritten without changing its content identity (our metadata added): new size and mtime, the
        same content key, so its embeddings stay its own and the next embed does not hash it again."""
        self.db.execute("UPDATE files SET size = ?, mtime_ns = ?, updated = ? WHERE path = ?",
                        (size, mtime_ns, time.time(), _to_db(path)))

    def move_file(self, old: str, new: str) -> None:
        with self.transaction():
            self._move_rows(old, new)

    def _move_rows(self, old: str, new: str) -> None:
        old, new = _to_db(old), _to_db(new)
        self.db.execute("UPDATE OR REPLACE files SET path = ?, updated = ? WHERE path = ?", (new, time.time(), old))
        self.db.execute("UPDATE OR REPLACE scores SET path = ? WHERE path = ?", (new, old))

    # ------------------------------------------------------------ the move journal

    def plan_moves(self, moves: list[tuple[str, str, bool]]) -> None:
        """Record (source, target, is_image) for files about to move, in one transaction."""
        now = time.time()
        self.db.executescript(MOVES)
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO moves (source, target, image, planned) VALUES (?,?,?,?)",
                                [(_to_db(s), _to_db(t), int(bool(i)), now) for s, t, i in moves])

    def moved(self, source: str, target: str, is_image: bool) -> None:
        """One file has landed at its target: its rows follow it and its journal row goes, in one transaction."""
        with self.transaction():
            if is_image:
                self._move_rows(source, target)
            self.db.execute("DELETE FROM moves WHERE source = ?", (_to_db(source),))

    def drop_moves(self, sources: list[str]) -> None:
        if not sources or not self._has_moves():
            return
        with self.transaction():
            self.db.executemany("DELETE FROM moves WHERE source = ?", [(_to_db(s),) for s in sources])

    def _has_moves(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'moves'").fetchone() \
            is not None

    def pending_moves(self) -> list[tuple[str, str, bool]]:
        """The moves an interrupted run left unfinished: (source, target, is_image), images first."""
        if not self._has_moves():
            return []  # no move has touched this store
        return [(_from_db(s), _from_db(t), bool(i)) for s, t, i in self.db.execute(
            "SELECT source, target, image FROM moves ORDER BY image DESC, planned, source")]

    def prune(self, gone: Callable[[str], bool], dry_run: bool = False, block: int = 10_000) -> PruneReport:
        """Forget the files for which `gone(path)` holds: their rows, their scores, and their embeddings
        unless another stored path has the same content. With `dry_run`, only count."""
        report = PruneReport()
        last = ""
        while True:  # in blocks of paths: memory bounded by the block, not the store
            part = [r[0] for r in self.db.execute("SELECT path FROM files WHERE path > ? ORDER BY path LIMIT ?",
                                                  (last, block))]
            if not part:
                break
            last = part[-1]
            report.files += [_from_db(p) for p in part if gone(_from_db(p))]
        if not report.files:
            return report
        with self.transaction():
            contents = set()
            for start in range(0, len(report.files), 900):
                part = [_to_db(p) for p in report.files[start : start + 900]]
                marks = ",".join("?" * len(part))
                contents.update(r[0] for r in self.db.execute(
                    f"SELECT DISTINCT content FROM files WHERE path IN ({marks}) AND content IS NOT NULL", part))
                report.scores += self.db.execute(f"SELECT COUNT(*) FROM scores WHERE path IN ({marks})",
                                                 part).fetchone()[0]
                self.db.execute(f"DELETE FROM files WHERE path IN ({marks})", part)
                self.db.execute(f"DELETE FROM scores WHERE path IN ({marks})", part)
            for content in sorted(contents):
                if self.db.execute("SELECT 1 FROM files WHERE content = ? LIMIT 1", (content,)).fetchone():
                    report.kept_shared += 1  # another path still uses these embeddings
                    continue
                report.embeddings += self.db.execute("SELECT COUNT(*) FROM embeddings WHERE content = ?",
                                                     (content,)).fetchone()[0]
                self.db.execute("DELETE FROM embeddings WHERE content = ?", (content,))
            if dry_run:
                raise _DryRun
        return report

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
            part = [_to_db(p) for p in paths[start : start + 900]]
            marks = ",".join("?" * len(part))
            for path, views, data in self.db.execute(
                    f"SELECT f.path, e.views, e.data FROM files f JOIN embeddings e ON e.content = f.content "
                    f"WHERE f.path IN ({marks}) AND f.status = 'ok' AND e.encoder_id = ? AND e.policy = ?",
                    (*part, encoder.id, policy)):
                rows[_from_db(path)] = (views, data)
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

    def put_scores(self, rows: Iterable[tuple[str, str, str, StoredScore]]) -> None:
        """Store (path, head, combine, StoredScore) rows, replacing earlier ones."""
        now = time.time()
        rows = list(rows)
        self.db.executemany(
            "INSERT OR REPLACE INTO scores (path, head, combine, score, label, probs, updated, kind) "
            "VALUES (?,?,?,?,?,?,?,?)",
            [(_to_db(path), head, combine, r.score, r.label, json.dumps(r.extra) if r.extra is not None else None, now,
              r.kind) for path, head, combine, r in rows])
        for label in {k for *_, r in rows if isinstance(r.extra, dict) for k in r.extra}:
            self.ensure_label_index(label)

    def ensure_label_index(self, label: str) -> None:
        """An index on one class's stored probability, so that sorting or a band by HEAD:CLASS needs no scan."""
        known = self.__dict__.setdefault("_label_indexes", set())
        if label in known:
            return
        name = "scores_p_" + label.encode("utf-8").hex()
        expr = label_expr("", label)  # partial: only the rows of heads that have this class
        self.db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON scores(head, combine, {expr}) WHERE {expr} IS NOT NULL")
        known.add(label)

    def scores(self, heads: list[str] | None = None, combine: str | None = None,
               paths: list[str] | None = None) -> dict[str, dict[str, StoredScore]]:
        """{path: {head: StoredScore}} for the stored scores (of these paths, at most 900), by path."""
        kind = "kind" if "kind" in self._score_columns else "NULL"
        sql = f"SELECT path, head, score, label, probs, {kind} FROM scores"
        where, args = [], []
        if combine:
            where.append("combine = ?")
            args.append(combine)
        if paths is not None:
            where.append(f"path IN ({','.join('?' * len(paths))})")
            args += [_to_db(p) for p in paths]
        out: dict[str, dict[str, StoredScore]] = {}
        for path, head, score, label, extra, kind in self.db.execute(
                sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args):
            if heads is None or head in heads:
                extra = json.loads(extra) if extra else None
                # schema 1 stored no kind: its classifiers were the rows with probabilities
                kind = kind or ("class" if extra else "score")
                out.setdefault(_from_db(path), {})[head] = StoredScore(score, label, extra, kind)
        return out

    def select_paths(self, combine: str, base: str, order: tuple[str, str | None] | None,
                     descending: bool = True, bounds: Iterable[tuple[str, str | None, str, float]] = (),
                     block: int = 1000) -> Iterator[list[str]]:
        """Paths whose stored scores satisfy every bound (head, class or None, 'min'|'max', value), ordered by
        `order` (head, class or None; ties by path) or else by path, in blocks of `block`: the selection, the
        sort and the top-N run in SQLite (the index on scores(head, combine, score) serves score bounds and
        orders), and memory holds one block. Paths are those with a score of head `base`."""
        bounds = list(bounds)
        heads = [base] + [h for h, _, _, _ in bounds] + ([order[0]] if order else [])
        aliases: dict[str, str] = {}
        joins, args = [], []
        for h in heads:
            if h not in aliases:
                a = aliases[h] = f"s{len(aliases)}"
                if len(aliases) == 1:
                    joins.append(f"scores {a}")
                else:
                    joins.append(f"JOIN scores {a} ON {a}.path = s0.path AND {a}.head = ? AND {a}.combine = ?")
                    args += [h, combine]
        where = ["s0.head = ?", "s0.combine = ?"]
        args += [heads[0], combine]

        def value(head: str, label: str | None) -> tuple[str, list]:
            a = aliases[head]
            if label is None:
                return f"{a}.score", []
            return label_expr(f"{a}.", label), []  # as the label's index spells it, so that it serves

        for head, label, kind, v in bounds:
            expr, extra = value(head, label)
            where.append(f"{expr} {'>=' if kind == 'min' else '<='} ?")
            args += [*extra, v]
        if order:
            expr, extra = value(*order)
            order_sql = f"{expr} {'DESC' if descending else 'ASC'}, s0.path"
            where.append(f"{expr} IS NOT NULL")
            args_order = extra
        else:
            order_sql, args_order = "s0.path", []
        sql = f"SELECT s0.path FROM {' '.join(joins)} WHERE {' AND '.join(where)} ORDER BY {order_sql}"
        if order and args_order:
            args = args + args_order + args_order  # once in WHERE (IS NOT NULL), once in ORDER BY
        cursor = self.db.execute(sql, args)
        while True:
            rows = cursor.fetchmany(block)
            if not rows:
                break
            yield [_from_db(r[0]) for r in rows]

    def score_values(self, head: str, combine: str, label: str | None = None) -> np.ndarray:
        """Every stored score of `head` (or its class `label`'s probability) made with `combine`, as float64."""
        expr = label_expr("", label) if label else "score"
        rows = self.db.execute(f"SELECT {expr} FROM scores WHERE head = ? AND combine = ? AND {expr} IS NOT NULL",
                               (head, combine)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.float64)

    def sample_path(self, head: str, combine: str) -> str | None:
        """Any one path with a score of `head` (no ordering: no scan)."""
        row = self.db.execute("SELECT path FROM scores WHERE head = ? AND combine = ? LIMIT 1",
                              (head, combine)).fetchone()
        return _from_db(row[0]) if row else None

    def count_scores(self, head: str, combine: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM scores WHERE head = ? AND combine = ?",
                               (head, combine)).fetchone()[0]

    def path_range(self, outside: str | None = None) -> tuple[str | None, str | None]:
        """The first and last stored score paths (their common folder is every scored path's), leaving out
        those under the folder `outside` (e.g. where files were copied or moved to)."""
        where, args = "", ()
        if outside:
            prefix = outside.rstrip(os.sep) + os.sep
            where, args = " WHERE NOT (path >= ? AND path < ?)", (prefix, prefix[:-1] + chr(ord(os.sep) + 1))
        lo = self.db.execute("SELECT MIN(path) FROM scores" + where, args).fetchone()[0]  # SQLite's min/max shortcut
        hi = self.db.execute("SELECT MAX(path) FROM scores" + where, args).fetchone()[0]
        return (None if lo is None else _from_db(lo)), (None if hi is None else _from_db(hi))

    def scored_heads(self, combine: str) -> list[str]:
        """The heads with scores made with `combine`, found through the index (no scan of the scores)."""
        heads = [r[0] for r in self.db.execute(
            "WITH RECURSIVE h(head) AS (SELECT MIN(head) FROM scores UNION ALL "
            "SELECT (SELECT MIN(head) FROM scores WHERE head > h.head) FROM h WHERE h.head IS NOT NULL) "
            "SELECT head FROM h WHERE head IS NOT NULL")]
        return [h for h in heads if self.db.execute("SELECT 1 FROM scores WHERE head = ? AND combine = ? LIMIT 1",
                                                    (h, combine)).fetchone()]

    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "files": q("SELECT COUNT(*) FROM files WHERE status = 'ok'"),
            "failed": q("SELECT COUNT(*) FROM files WHERE status = 'failed'"),
            "embeddings": q("SELECT COUNT(*) FROM embeddings"),
            "scores": q("SELECT COUNT(*) FROM scores"),
            "encoders": [e.__dict__ for e in self.encoders()],
            "policies": [{"clip": p.encoder.source, "clip_name": p.encoder.name, "policy": p.policy,
                          "embedded": p.count} for p in self.policies()],
            "heads": self.score_heads(),
        }

    def policies(self, encoder: EncoderRow | None = None) -> list[PolicyInfo]:
        """The sets of stored embeddings: (CLIP, crop policy, count), optionally of one CLIP."""
        by_id = {e.id: e for e in self.encoders()}
        sql = "SELECT encoder_id, policy, COUNT(*) FROM embeddings"
        args: tuple = ()
        if encoder is not None:
            sql += " WHERE encoder_id = ?"
            args = (encoder.id,)
        return [PolicyInfo(by_id[e], p, n) for e, p, n in self.db.execute(
            sql + " GROUP BY encoder_id, policy ORDER BY encoder_id, policy", args)]

    def export_numpy(self, out: str | os.PathLike, encoder: EncoderRow, policy: str) -> int:
        """Write an .npz: paths [N], offsets [N+1], embeddings [total views, D] (float32), and the CLIP."""
        return self.export_sets(out, [(encoder, policy)])[0]

    def export_sets(self, out: str | os.PathLike, sets: list[tuple[EncoderRow, str]]) -> list[int]:
        """Write an .npz of one or more (CLIP, policy) sets of embeddings; the number of images of each.

        One set: arrays paths [N], offsets [N+1], embeddings [total views, D] (float32), clip_identity,
        clip_source, policy. Several: `sets` lists their names, and each set's arrays are named
        `NAME.paths`, `NAME.offsets`, ... (NAME: the policy, prefixed by the CLIP's name when there are
        several CLIPs).
        """
        paths = [f.path for f in self.files()]
        arrays: dict[str, np.ndarray] = {}
        counts_out, names = [], []
        several_clips = len({e.id for e, _ in sets}) > 1
        for encoder, policy in sets:
            found, counts, stacked, _ = self.read_embeddings(paths, encoder, policy)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            name = set_name(encoder, policy, several_clips)
            prefix = "" if len(sets) == 1 else name + "."
            arrays.update({f"{prefix}paths": np.array(found, dtype=str), f"{prefix}offsets": offsets,
                           f"{prefix}embeddings": stacked, f"{prefix}clip_identity": np.array(encoder.identity),
                           f"{prefix}clip_source": np.array(encoder.source), f"{prefix}policy": np.array(policy)})
            counts_out.append(len(found))
            names.append(name)
        if len(sets) > 1:
            arrays["sets"] = np.array(names, dtype=str)
        np.savez(out, **arrays)
        return counts_out

    def score_heads(self) -> dict[str, dict[str, int]]:
        """{head: {combine: number of scored files}} for the stored scores."""
        out: dict[str, dict[str, int]] = {}
        for head, combine, n in self.db.execute(
                "SELECT head, combine, COUNT(*) FROM scores GROUP BY head, combine ORDER BY head, combine"):
            out.setdefault(head, {})[combine] = n
        return out

    def merge_from(self, sources: Iterable[str | os.PathLike]) -> dict[str, int]:
        """Copy every encoder, embedding, file and score of the stores `sources` into this one (existing rows win)."""
        added = {"embeddings": 0, "files": 0, "scores": 0}
        for src in sources:
            with EmbeddingStore(src, create=False, readonly=True) as other:
                ids = {e.id: self.register_encoder(e.identity, e.name, e.source, e.image_size, e.embed_dim).id
                       for e in other.encoders()}
                with self.transaction():
                    before = {t: self._count(t) for t in added}
                    for content, enc_id, policy, views, data in other.db.execute(
                            "SELECT content, encoder_id, policy, views, data FROM embeddings"):
                        self.db.execute("INSERT OR IGNORE INTO embeddings (content, encoder_id, policy, views, data) "
                                        "VALUES (?,?,?,?,?)", (content, ids[enc_id], policy, views, data))
                    file_cols = "path, size, mtime_ns, content, width, height, status, error, notes, updated"
                    self.db.executemany(f"INSERT OR IGNORE INTO files ({file_cols}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                        other.db.execute(f"SELECT {file_cols} FROM files"))
                    kind = "kind" if "kind" in other._score_columns else "NULL"
                    self.db.executemany(
                        "INSERT OR IGNORE INTO scores (path, head, combine, score, label, probs, updated, kind) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        other.db.execute(f"SELECT path, head, combine, score, label, probs, updated, {kind} "
                                         "FROM scores"))
                    for t in added:
                        added[t] += self._count(t) - before[t]
        return added

    def _count(self, table: str) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def label_expr(prefix: str, label: str) -> str:
    """SQL for one class's stored probability (an inline literal, so an index on it can serve a query)."""
    path = '$."' + label.replace('"', "") + '"'
    return f"json_extract({prefix}probs, '{path.replace(chr(39), chr(39) * 2)}')"


def merge_stores(target: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Merge `sources` into `target` all or nothing: every source is checked first, the merge is done on a
    copy (`TARGET.merging`) and renamed over the target only when it finished; a failure leaves the target
    as it was. (Run no other writer on the target meanwhile.)"""
    sources = list(sources)
    for src in sources:  # a missing or foreign part fails here, before anything is written
        EmbeddingStore(src, create=False, readonly=True).close()
    target = Path(target)
    tmp = target.with_name(target.name + ".merging")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)  # our own temporary file from an interrupted merge
    try:
        if target.exists():
            with EmbeddingStore(target, create=False) as current:
                copy = sqlite3.connect(str(tmp))
                try:
                    current.db.backup(copy)
                finally:
                    copy.close()
        with EmbeddingStore(tmp) as merged:
            added = merged.merge_from(sources)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return added


def set_name(encoder: EncoderRow, policy: str, with_clip: bool) -> str:
    """A name for one (CLIP, policy) set of embeddings in an export: 'whole', 'tiles-672-1536-up', with the CLIP."""
    safe = policy.replace(":", "-")
    return f"{encoder.name}.{safe}" if with_clip else safe


class _DryRun(Exception):
    """Raised inside a transaction to roll back what a dry run did."""


class _Transaction:
    def __init__(self, db, path: Path):
        self.db, self.path = db, path

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise store_error(self.path, e) from None
        return self.db

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            if exc_type is None:
                raise store_error(self.path, e) from None
            # the rollback failed too: SQLite undoes the transaction when the connection closes
        if exc_type is not None and issubclass(exc_type, sqlite3.Error):
            raise store_error(self.path, exc) from None
        return exc_type is _DryRun  # a dry run's changes are rolled back, and that is all it raised for


def _guarded(method):
    """An SQLite error inside a store method becomes a StoreError naming the store (damaged, read-only, busy)."""

    if inspect.isgeneratorfunction(method):  # errors come while the caller iterates

        @functools.wraps(method)
        def blocks(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise store_error(self.path, e) from None

        return blocks

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise store_error(self.path, e) from None

    return call


for _name, _method in list(vars(EmbeddingStore).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("transaction", "reader", "close"):
        setattr(EmbeddingStore, _name, _guarded(_method))


__all__ = ["EmbeddingStore", "ReadOnlyStore", "merge_stores", "policy_key", "store_error"]
