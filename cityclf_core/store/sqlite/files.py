"""The SQLite store's files and embeddings: the CLIPs recorded, the files seen, their embeddings.

Embeddings are keyed by the file's *content*, the CLIP's identity and the crop
policy: an unchanged file is never embedded twice (a touched one is re-hashed,
not re-embedded; a renamed or duplicated one reuses its embeddings), a changed
one gets new embeddings, and the embeddings of one CLIP are never read as
another's. Each chunk of work is one transaction: a killed run leaves only
whole rows, and a rerun carries on from them.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from ...errors import StoreError
from ..rows import EncoderRow, FileRow, PolicyInfo, PruneReport
from .sql import DryRun, error_text, from_db, guarded, to_db


class FilesAndEmbeddings:
    """The encoders, files, embeddings and meta (imported shards) tables."""

    # ------------------------------------------------------------ encoders

    @guarded
    def register_encoder(self, identity: str, name: str, source: str, image_size: int, embed_dim: int) -> EncoderRow:
        row = self.encoder_by_identity(identity) or self._earlier_encoder(identity, str(source))
        if row is not None:
            if (row.image_size, row.embed_dim) != (image_size, embed_dim):
                raise StoreError(f"store {self.path}: CLIP {identity} was recorded with another shape")
            return row
        with self.transaction():
            self.db.execute(
                "INSERT INTO encoders (identity, name, source, image_size, embed_dim, created) VALUES (?,?,?,?,?,?)",
                (identity, name, str(source), image_size, embed_dim, time.time()))
        return self.encoder_by_identity(identity)

    @guarded
    def encoders(self) -> list[EncoderRow]:
        return [EncoderRow(*r) for r in self.db.execute(
            "SELECT id, identity, name, source, image_size, embed_dim FROM encoders ORDER BY id")]

    @guarded
    def encoder_by_identity(self, identity: str) -> EncoderRow | None:
        r = self.db.execute("SELECT id, identity, name, source, image_size, embed_dim FROM encoders "
                            "WHERE identity = ?", (identity,)).fetchone()
        return EncoderRow(*r) if r else None

    @guarded
    def find_encoder(self, identity: str | None, source: str) -> EncoderRow:
        """The recorded CLIP with this identity, else the one recorded from this source; clear error if none."""
        if identity:
            row = self.encoder_by_identity(identity) or self._earlier_encoder(identity, str(source))
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

    def _earlier_encoder(self, identity: str, source: str) -> EncoderRow | None:
        """This CLIP's row under the identity another version gave it (loading.fingerprints pairs the two for
        the CLIPs fingerprinted on this machine), recorded from the same source; else None.

        A row under an earlier identity is renamed to `identity` (one transaction, with a note), so its
        embeddings serve this CLIP; where the store cannot be written now, the row is read under `identity` as
        it is. A row under a later identity (asked for by an earlier version's identity, e.g. a head's record)
        is returned as it is.
        """
        from ...loading.fingerprints import former_identity, later_identities
        from ...notices import note

        for later in sorted(later_identities(identity)):
            row = self.encoder_by_identity(later)
            if row is not None and row.source == source:
                return row
        old = former_identity(identity)
        row = self.encoder_by_identity(old) if old else None
        if row is None or row.source != source:
            return None
        if not self.readonly:
            try:
                with self.transaction():
                    self.db.execute("UPDATE encoders SET identity = ? WHERE identity = ?", (identity, old))
                note(f"store {self.path}: CLIP {row.name} is now recorded under its identity over all its weights "
                     f"({identity}, was {old}); its embeddings are kept")
            except StoreError:
                pass  # busy or read-only now: read it as it is; a later writer renames it
            renamed = self.encoder_by_identity(identity)
            if renamed is not None:
                return renamed
        return EncoderRow(row.id, identity, row.name, row.source, row.image_size, row.embed_dim)

    # ------------------------------------------------------------ files

    @guarded
    def file(self, path: str) -> FileRow | None:
        r = self.db.execute("SELECT path, size, mtime_ns, content, status, error FROM files WHERE path = ?",
                            (to_db(path),)).fetchone()
        return FileRow(from_db(r[0]), *r[1:]) if r else None

    @guarded
    def files(self, paths: Iterable[str] | None = None, status: str | None = "ok") -> list[FileRow]:
        sql = "SELECT path, size, mtime_ns, content, status, error FROM files"
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        rows = [FileRow(from_db(r[0]), *r[1:]) for r in self.db.execute(
            sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args)]
        if paths is not None:
            wanted = set(paths)
            rows = [r for r in rows if r.path in wanted]
        return rows

    @guarded
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

    @guarded
    def put_file(self, path: str, size: int | None, mtime_ns: int | None, content: str | None,
                 width: int | None = None, height: int | None = None, status: str = "ok",
                 error: str | None = None, notes: list[str] | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, content, width, height, status, error, notes, "
            "updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (to_db(path), size, mtime_ns, content, width, height, status, error_text(error),
             json.dumps(notes) if notes else None, time.time()))

    @guarded
    def restat_file(self, path: str, size: int, mtime_ns: int) -> None:
        """A file rewritten without changing its content identity (our metadata added): new size and mtime, the
        same content key, so its embeddings stay its own and the next embed does not hash it again."""
        self.db.execute("UPDATE files SET size = ?, mtime_ns = ?, updated = ? WHERE path = ?",
                        (size, mtime_ns, time.time(), to_db(path)))

    @guarded
    def move_file(self, old: str, new: str) -> None:
        with self.transaction():
            self._move_rows(old, new)

    def _move_rows(self, old: str, new: str) -> None:
        old, new = to_db(old), to_db(new)
        self.db.execute("UPDATE OR REPLACE files SET path = ?, updated = ? WHERE path = ?", (new, time.time(), old))
        self.db.execute("UPDATE OR REPLACE scores SET path = ? WHERE path = ?", (new, old))


    @guarded
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
            report.files += [from_db(p) for p in part if gone(from_db(p))]
        if not report.files:
            return report
        with self.transaction():
            contents = set()
            for start in range(0, len(report.files), 900):
                part = [to_db(p) for p in report.files[start : start + 900]]
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
                raise DryRun
        return report


    # ------------------------------------------------------------ embeddings

    @guarded
    def known_contents(self, encoder_id: int, policy: str) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT content FROM embeddings WHERE encoder_id = ? AND policy = ?", (encoder_id, policy))}

    @guarded
    def put_embedding(self, content: str, encoder_id: int, policy: str, embeddings: np.ndarray) -> None:
        arr = np.ascontiguousarray(embeddings, dtype=np.float32)
        if arr.ndim != 2:
            raise StoreError("internal: embeddings must be [views, D]")
        self.db.execute("INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?,?)",
                        (content, encoder_id, policy, int(arr.shape[0]), arr.tobytes()))

    @guarded
    def count_embeddings(self, encoder_id: int | None = None) -> int:
        if encoder_id is None:
            return self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM embeddings WHERE encoder_id = ?", (encoder_id,)).fetchone()[0]

    @guarded
    def read_embeddings(self, paths: list[str], encoder: EncoderRow, policy: str
                        ) -> tuple[list[str], list[int], np.ndarray, list[str]]:
        """Stored embeddings of these files: (found paths, views per path, stacked [sum views, D], missing paths)."""
        found, counts, blobs, missing = [], [], [], []
        rows = {}
        for start in range(0, len(paths), 900):  # SQLite's limit on bound parameters
            part = [to_db(p) for p in paths[start : start + 900]]
            marks = ",".join("?" * len(part))
            for path, views, data in self.db.execute(
                    f"SELECT f.path, e.views, e.data FROM files f JOIN embeddings e ON e.content = f.content "
                    f"WHERE f.path IN ({marks}) AND f.status = 'ok' AND e.encoder_id = ? AND e.policy = ?",
                    (*part, encoder.id, policy)):
                rows[from_db(path)] = (views, data)
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

    @guarded
    def embeddings_by_content(self, contents: list[str], encoder: EncoderRow, policy: str) -> dict[str, np.ndarray]:
        """Stored embeddings of these file contents (sha256), {content: [views, D] float32}; contents without
        embeddings of this CLIP and policy are left out."""
        found = {}
        for start in range(0, len(contents), 900):  # SQLite's limit on bound parameters
            part = contents[start : start + 900]
            marks = ",".join("?" * len(part))
            for content, views, data in self.db.execute(
                    f"SELECT content, views, data FROM embeddings WHERE encoder_id = ? AND policy = ? "
                    f"AND content IN ({marks})", (encoder.id, policy, *part)):
                found[content] = np.frombuffer(data, dtype=np.float32).reshape(views, encoder.embed_dim)
        return found

    @guarded
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

    # ------------------------------------------------------------ imported shards

    @guarded
    def record_import(self, name: str, rows: int) -> None:
        """Note that shard `name` was imported. Call it inside the transaction that wrote the shard's rows,
        so that a shard is either wholly imported and recorded, or neither (meta rows: old stores stay readable).
        """
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (f"import:{name}", json.dumps({"rows": int(rows), "time": time.time()})))

    @guarded
    def imported_shards(self) -> set[str]:
        """Names of the shards recorded by record_import."""
        return {key[len("import:"):] for (key,) in self.db.execute(
            "SELECT key FROM meta WHERE key >= 'import:' AND key < 'import;'")}


__all__ = ["FilesAndEmbeddings"]
