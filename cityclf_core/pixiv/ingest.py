"""A dataset folder in the document's layout -> `DATASET/.database/metadata.sqlite3`, table `illusts`.

Layout: images under folders named by the first two characters of the artwork
id, each with its gallery-dl sidecar `<image file name>.json` (the document's
own tree pairs `29….png` with `29….jpg.json`, so a sidecar is matched to the
image of the same name without extension, whatever its extension).

The table has the document's columns (filename = image name without extension,
`12345678_p0`) plus the ones an honest evaluation needs: `illust_id`, `page`,
artist `user_id`, `x_restrict`, `crawled` (the sidecar's mtime), `width`,
`height`, and where the row came from (`image`, `sidecar` relative to the
dataset, the sidecar's mtime and size).

An existing `metadata.sqlite3` as the document defines it is read and kept:
its rows stay (those without a sidecar too), missing columns are added (after
a one-time copy `metadata.sqlite3.before-cityclf`). The document's schema
misses a comma after `total_bookmarks INTEGER`, so SQLite made `total_view
INTEGER` part of that column's type and the table has no `total_view` column;
it is added and filled from the sidecars, and the rows it cannot fill are
reported.

Idempotent: a sidecar whose mtime and size are unchanged is not read again, a
row is written only when a value changed, so a rerun changes nothing and a
changed sidecar updates its row. Bad input is reported and skipped, never fatal.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..scoring.images import IMAGE_EXTENSIONS
from .sidecar import COLUMN_TYPES, COLUMNS, SidecarError, parse_sidecar

DATABASE = Path(".database") / "metadata.sqlite3"
WRITE_ROWS = 5000  # rows per transaction


@dataclass
class IngestReport:
    database: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list = field(default_factory=list)  # (path, why): not ingested
    notes: list = field(default_factory=list)  # (path, what): ingested, but worth saying

    @property
    def rows(self) -> int:
        return self.added + self.updated + self.unchanged

    def summary(self) -> str:
        return (f"{self.database}: {self.added} row(s) added, {self.updated} updated, {self.unchanged} unchanged, "
                f"{len(self.skipped)} input(s) skipped, {len(self.notes)} note(s)")


def database_path(dataset: str | os.PathLike) -> Path:
    return Path(dataset) / DATABASE


def open_database(path: Path, report: IngestReport | None = None) -> sqlite3.Connection:
    """The metadata database with every column of COLUMNS (an existing one is migrated, after a backup copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with open(path, "rb") as f:
            magic = f.read(16)
        if magic and magic != b"SQLite format 3\x00":
            raise ConfigError(f"{path} is not an SQLite file; move it away and rerun ingest")
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=60)
        have = {r[1]: r[2] for r in db.execute("PRAGMA table_info(illusts)")}
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{path} cannot be read as SQLite ({e}); move it away and rerun ingest") from None
    if not have:
        cols = ", ".join(f"{c} {COLUMN_TYPES.get(c, 'INTEGER')}" for c in COLUMNS)
        db.execute(f"CREATE TABLE illusts ({cols})")
        return db
    if "filename" not in have:
        raise ConfigError(f"{path}: table illusts has no 'filename' column; it is not the document's table")
    missing = [c for c in COLUMNS if c not in have]
    if missing:
        backup = path.with_name(path.name + ".before-cityclf")
        if not backup.exists():
            backup_database(db, backup)
        if "total_view" in missing and "total_view" in str(have.get("total_bookmarks", "")).lower() \
                and report is not None:
            report.notes.append((str(path), "table illusts has no total_view column: the document's schema misses "
                                 "a comma after 'total_bookmarks INTEGER', so SQLite read 'total_view INTEGER' as "
                                 "part of its type. Added the column; views come from the sidecars, and rows "
                                 "without a sidecar have none (reported below)"))
        with transaction(db):
            for c in missing:
                db.execute(f"ALTER TABLE illusts ADD COLUMN {c} {COLUMN_TYPES.get(c, 'INTEGER').split()[0]}")
        if report is not None:
            report.notes.append((str(path), f"added column(s) {', '.join(missing)}; the original is kept as {backup}"))
    return db


def backup_database(db: sqlite3.Connection, backup: Path) -> None:
    """A whole copy of the open database at `backup`, through SQLite's backup API: commits still in a
    write-ahead log are in it too (a copy of the main file alone would miss them). Written to
    `backup.tmp` (a killed run's leftover is replaced) and renamed, so `backup` is whole or absent."""
    tmp = backup.with_name(backup.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    out = sqlite3.connect(str(tmp))
    try:
        db.backup(out)
    finally:
        out.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, backup)


def _sidecar_stem(name: str) -> str:
    """'123_p0.png.json' -> '123_p0'; '123_p0.json' -> '123_p0'."""
    base = name[: -len(".json")]
    suffix = os.path.splitext(base)[1]
    return base[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else base


def scan(dataset: Path, report: IngestReport, require_images: bool):
    """Yield (filename, sidecar path, image path or None) of each usable pair; report the rest."""
    seen: dict[str, Path] = {}
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images: dict[str, str] = {}
        sidecars: dict[str, list[str]] = {}
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if name.lower().endswith(".json"):
                    sidecars.setdefault(_sidecar_stem(name), []).append(name)
                elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    if os.path.splitext(name)[0] in images:
                        report.skipped.append((str(folder / name), f"a second image named "
                                               f"{os.path.splitext(name)[0]}.* in this folder; rename or remove one"))
                        continue
                    images[os.path.splitext(name)[0]] = name
        for stem in sorted(images.keys() - sidecars.keys()):
            report.skipped.append((str(folder / images[stem]), f"no sidecar: expected {images[stem]}.json "
                                   "(gallery-dl --write-metadata) next to it"))
        for stem in sorted(sidecars):
            names = sorted(sidecars[stem])
            for extra in names[1:]:
                report.skipped.append((str(folder / extra), f"a second sidecar for {stem} (used {names[0]})"))
            sidecar = folder / names[0]
            image = folder / images[stem] if stem in images else None
            if image is None and require_images:
                report.skipped.append((str(sidecar), f"no image {stem}.* next to this sidecar"))
                continue
            if stem in seen:
                report.skipped.append((str(sidecar), f"duplicate file name {stem}: already read from {seen[stem]}"))
                continue
            seen[stem] = sidecar
            if not stem[:2] == folder.name[:2]:
                report.notes.append((str(sidecar), f"in folder {folder.name}, not {stem[:2]}/ (the document's layout)"))
            yield stem, sidecar, image


def ingest(dataset: str | os.PathLike, require_images: bool = True,
           on_progress: Callable[[int], None] | None = None) -> IngestReport:
    """Read the sidecars under `dataset` into its metadata database; see the module docstring."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise ConfigError(f"dataset folder {dataset} not found")
    path = database_path(dataset)
    report = IngestReport(path)
    db = open_database(path, report)
    try:
        old = {r[0]: dict(zip(COLUMNS, r)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM illusts")}
        pending: list[tuple] = []
        done = 0
        for filename, sidecar, image in scan(dataset, report, require_images):
            done += 1
            if on_progress and done % 1000 == 0:
                on_progress(done)
            try:
                st = sidecar.stat()
            except OSError as e:
                report.skipped.append((str(sidecar), f"cannot be read ({e.strerror})"))
                continue
            rel_sidecar = sidecar.relative_to(dataset).as_posix()
            rel_image = image.relative_to(dataset).as_posix() if image else None
            before = old.get(filename)
            if (before and before["sidecar"] == rel_sidecar and before["sidecar_mtime_ns"] == st.st_mtime_ns
                    and before["sidecar_size"] == st.st_size and before["image"] == rel_image):
                report.unchanged += 1
                continue
            try:
                row = parse_sidecar(sidecar.read_text(encoding="utf-8"), filename, st.st_mtime)
            except (SidecarError, UnicodeDecodeError) as e:
                report.skipped.append((str(sidecar), str(e)))
                continue
            except OSError as e:
                report.skipped.append((str(sidecar), f"cannot be read ({e.strerror})"))
                continue
            for note in row.notes:
                report.notes.append((str(sidecar), note))
            values = dict(row.values, image=rel_image, sidecar=rel_sidecar, sidecar_mtime_ns=st.st_mtime_ns,
                          sidecar_size=st.st_size)
            values["tag_character"] = before.get("tag_character") if before else None  # not in sidecars: kept
            if before is None:
                report.added += 1
            elif any(before.get(c) != values.get(c) for c in COLUMNS):
                report.updated += 1
            else:
                report.unchanged += 1
                continue
            pending.append(tuple(values.get(c) for c in COLUMNS))
            if len(pending) >= WRITE_ROWS:
                _write(db, pending)
        _write(db, pending)
        _check_rows(db, report, path)
    finally:
        db.close()
    return report


def _write(db: sqlite3.Connection, rows: list[tuple]) -> None:
    if not rows:
        return
    marks = ",".join("?" * len(COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "filename")
    with transaction(db):
        db.executemany(f"INSERT INTO illusts ({', '.join(COLUMNS)}) VALUES ({marks}) "
                       f"ON CONFLICT(filename) DO UPDATE SET {updates}", rows)
    rows.clear()


@contextmanager
def transaction(db: sqlite3.Connection):
    """One transaction (the connection is in autocommit mode, where `with db:` would commit every row)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite rolled back itself (a full disk): the first error is the one to tell
            pass
        raise
    db.execute("COMMIT")


def _check_rows(db: sqlite3.Connection, report: IngestReport, path: Path) -> None:
    """Say what the table holds that training cannot use as it is."""
    no_views = db.execute("SELECT COUNT(*) FROM illusts WHERE total_view IS NULL OR total_view = 0").fetchone()[0]
    if no_views:
        report.notes.append((str(path), f"{no_views} row(s) have no view count (no sidecar gave one): left out of "
                             "training and evaluation"))
    multi = db.execute("SELECT illust_id, COUNT(*), COUNT(DISTINCT total_bookmarks), COUNT(DISTINCT total_view) "
                       "FROM illusts WHERE illust_id IS NOT NULL GROUP BY illust_id HAVING COUNT(*) > 1").fetchall()
    if multi:
        report.notes.append((str(path), f"{len(multi)} work(s) have several pages (_p0, _p1 ...) sharing one id and "
                             "one set of counts: each work is one example (its first page), and never on both "
                             "sides of a split"))
    for illust_id, _, nb, nv in multi:
        if nb > 1 or nv > 1:
            report.notes.append((str(path), f"work {illust_id}: its pages were crawled with different counts; the "
                                 "first page's are used"))


__all__ = ["DATABASE", "IngestReport", "database_path", "ingest", "open_database"]
