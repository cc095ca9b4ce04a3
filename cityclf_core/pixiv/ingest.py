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

An existing `metadata.sqlite3` is read and kept: its rows stay (those without
a sidecar too). Two schemas of the original project are known: the current
one (`filename TEXT PRIMARY KEY`, the document's) and its first one (`id
INTEGER PRIMARY KEY` = the artwork id, `filename` not unique, one row per work,
`num` the page). Either is migrated on a copy (`metadata.sqlite3.migrating`)
that then replaces the file in one rename, so a kill leaves the old database
or the new one; before that, a one-time backup `metadata.sqlite3.before-cityclf`
is made with SQLite's backup API. The first schema's table is rebuilt with
`filename` (image name without extension) as its key, `illust_id` from `id`
and `page` from `num`; every other old column is kept. The document's schema
misses a comma after `total_bookmarks INTEGER`, so SQLite made `total_view
INTEGER` part of that column's type and the table has no `total_view` column;
it is added and filled from the sidecars, and the rows it cannot fill are
reported.

A folder with no sidecars at all is an error (no database is created).

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
from .sidecar import COLUMN_TYPES, COLUMNS, SidecarError, format_time, parse_sidecar, parse_time

DATABASE = Path(".database") / "metadata.sqlite3"
WRITE_ROWS = 5000  # rows per transaction
ANIMATION_EXTENSIONS = (".zip", ".webm", ".mp4", ".mkv")  # gallery-dl's ugoira: frames in a zip, or converted
MOSTLY = 0.5  # share of the read sidecars above which a setting is warned about


@dataclass
class IngestReport:
    database: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list = field(default_factory=list)  # (path, why): not ingested
    notes: list = field(default_factory=list)  # (path, what): ingested, but worth saying
    warnings: list = field(default_factory=list)  # about the whole dataset, each said once
    sidecars: int = 0  # sidecar files found

    @property
    def rows(self) -> int:
        return self.added + self.updated + self.unchanged

    def summary(self) -> str:
        return (f"{self.database}: {self.added} row(s) added, {self.updated} updated, {self.unchanged} unchanged, "
                f"{len(self.skipped)} input(s) skipped, {len(self.notes)} note(s)")


def database_path(dataset: str | os.PathLike) -> Path:
    return Path(dataset) / DATABASE


def open_database(path: Path, report: IngestReport | None = None) -> sqlite3.Connection:
    """The metadata database with every column of COLUMNS (an existing one is migrated; see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    have = table_columns(path) if path.exists() else {}
    if have:
        migrate(path, have, report)
    db = sqlite3.connect(str(path), isolation_level=None, timeout=60)
    if not have:
        cols = ", ".join(f"{c} {COLUMN_TYPES.get(c, 'INTEGER')}" for c in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS illusts ({cols})")
    return db


def table_columns(path: Path) -> dict[str, tuple[str, int]]:
    """{column: (declared type, primary-key position)} of table illusts ({} when there is none)."""
    with open(path, "rb") as f:
        magic = f.read(16)
    if magic and magic != b"SQLite format 3\x00":
        raise ConfigError(f"{path} is not an SQLite file; move it away and rerun ingest")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {r[1]: (str(r[2] or ""), int(r[5])) for r in db.execute("PRAGMA table_info(illusts)")}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{path} cannot be read as SQLite ({e}); move it away and rerun ingest") from None


def backup_database(path: Path) -> Path:
    """A one-time copy `<name>.before-cityclf`, made with SQLite's backup API (consistent, atomic)."""
    backup = path.with_name(path.name + ".before-cityclf")
    if not backup.exists():
        copy_database(path, backup)
    return backup


def copy_database(src: Path, dest: Path) -> None:
    """`src` copied to `dest` with SQLite's backup API, through a temporary file renamed into place."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(str(tmp))
    try:
        source.backup(target)  # commits still in a write-ahead log are copied too
    finally:
        target.close()
        source.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def migrate(path: Path, have: dict[str, tuple[str, int]], report: IngestReport | None) -> None:
    """Bring an existing table to COLUMNS with `filename` as its key: migrated on a copy, then the copy written
    back over the database in one SQLite transaction (the backup API, through SQLite's locks, so another
    connection that has the database open in WAL mode sees the old database or the new one)."""
    if "filename" not in have:
        raise ConfigError(f"{path}: table illusts has no 'filename' column; it is not the document's table")
    keyed = have["filename"][1] == 1 and sum(pk > 0 for _, pk in have.values()) == 1
    missing = [c for c in COLUMNS if c not in have]
    if keyed and not missing:
        return
    backup = backup_database(path)
    work = path.with_name(path.name + ".migrating")
    copy_database(path, work)
    db = sqlite3.connect(str(work), isolation_level=None)
    try:
        with transaction(db):
            if keyed:
                for c in missing:
                    db.execute(f"ALTER TABLE illusts ADD COLUMN {c} {COLUMN_TYPES.get(c, 'INTEGER').split()[0]}")
                merged = 0
            else:
                merged = _rebuild(db, have)
        target = sqlite3.connect(str(path), timeout=60)
        try:
            db.backup(target)  # one write transaction on the database: a kill leaves the old or the new
        finally:
            target.close()
    finally:
        db.close()
        work.unlink(missing_ok=True)
    if report is None:
        return
    if "total_view" in missing and "total_view" in have.get("total_bookmarks", ("", 0))[0].lower():
        report.notes.append((str(path), "table illusts has no total_view column: the document's schema misses "
                             "a comma after 'total_bookmarks INTEGER', so SQLite read 'total_view INTEGER' as "
                             "part of its type. Added the column; views come from the sidecars, and rows "
                             "without a sidecar have none (reported below)"))
    if not keyed:
        report.notes.append((str(path), "table illusts had the original project's first schema (id INTEGER "
                             "PRIMARY KEY, filename not unique): rebuilt with filename as its key, illust_id from "
                             "id, page from num" + (f"; {merged} row(s) with a file name seen before were merged "
                                                    "into the later one" if merged else "")))
    if missing:
        report.notes.append((str(path), f"added column(s) {', '.join(missing)}"))
    report.notes.append((str(path), f"the original database is kept as {backup}"))


def _rebuild(db: sqlite3.Connection, have: dict[str, tuple[str, int]]) -> int:
    """The first schema's table -> COLUMNS (filename the key) + every other old column; returns rows merged."""
    old_cols = list(have)
    kept = [c for c in old_cols if c not in COLUMNS]
    types = {c: have[c][0].upper().replace("PRIMARY KEY", "").strip() for c in kept}
    cols = [f"{c} {COLUMN_TYPES.get(c, 'INTEGER')}" for c in COLUMNS] + [f'"{c}" {types[c]}' for c in kept]
    db.execute(f"CREATE TABLE illusts_migrated ({', '.join(cols)})")
    quoted = ", ".join(f'"{c}"' for c in old_cols)
    rows = db.execute(f"SELECT {quoted} FROM illusts ORDER BY rowid").fetchall()
    out: dict[str, tuple] = {}
    for r in rows:
        d = dict(zip(old_cols, r))
        illust_id = d.get("illust_id", d.get("id"))
        page = d.get("page", d.get("num"))
        name = str(d.get("filename") or "")
        stem, ext = os.path.splitext(name)
        name = stem if ext.lower() in IMAGE_EXTENSIONS or ext.lower() in ANIMATION_EXTENSIONS else name
        if not name and illust_id is not None:
            name = f"{illust_id}_p{page or 0}"
        if not name:
            continue
        d.update(filename=name, illust_id=illust_id, page=page)
        out[name] = tuple(d.get(c) for c in COLUMNS) + tuple(d[c] for c in kept)
    names = [*COLUMNS, *(f'"{c}"' for c in kept)]
    db.executemany(f"INSERT INTO illusts_migrated ({', '.join(names)}) VALUES ({','.join('?' * len(names))})",
                   list(out.values()))
    db.execute("DROP TABLE illusts")
    db.execute("ALTER TABLE illusts_migrated RENAME TO illusts")
    return len(rows) - len(out)


def _sidecar_stem(name: str) -> str:
    """'123_p0.png.json' -> '123_p0'; '123_p0.json' -> '123_p0'."""
    base = name[: -len(".json")]
    suffix = os.path.splitext(base)[1].lower()
    return base[: -len(suffix)] if suffix in IMAGE_EXTENSIONS or suffix in ANIMATION_EXTENSIONS else base


def scan(dataset: Path, report: IngestReport, require_images: bool):
    """Yield (filename, sidecar path, image path or None) of each usable pair; report the rest."""
    seen: dict[str, Path] = {}
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images: dict[str, str] = {}
        animations: dict[str, str] = {}
        sidecars: dict[str, list[str]] = {}
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if name.lower().endswith(".json"):
                    sidecars.setdefault(_sidecar_stem(name), []).append(name)
                    report.sidecars += 1
                elif os.path.splitext(name)[1].lower() in ANIMATION_EXTENSIONS:
                    animations[os.path.splitext(name)[0]] = name
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
                if stem in animations:
                    report.skipped.append((str(sidecar), f"ugoira: no still image ({animations[stem]} holds the "
                                           f"animation); save its first frame as {stem}.png next to it to use it, "
                                           "or ingest its metadata alone with --metadata-only"))
                else:
                    report.skipped.append((str(sidecar), f"no image {stem}.* next to this sidecar"))
                continue
            if stem in seen:
                report.skipped.append((str(sidecar), f"duplicate file name {stem}: already read from {seen[stem]}"))
                continue
            seen[stem] = sidecar
            if not stem[:2] == folder.name[:2]:
                report.notes.append((str(sidecar), f"in folder {folder.name}, not {stem[:2]}/ (the document's layout)"))
            yield stem, sidecar, image


def _crawl_time(text: str | None):
    if text is None:
        return None
    try:
        t = parse_time(text, "--crawled")
    except SidecarError as e:
        raise ConfigError(f"{e}") from None
    if t is None:
        raise ConfigError("--crawled needs a date such as 2025-01-15")
    return t


def ingest(dataset: str | os.PathLike, require_images: bool = True,
           on_progress: Callable[[int], None] | None = None, crawled: str | None = None) -> IngestReport:
    """Read the sidecars under `dataset` into its metadata database (see _ingest). Writing the database failing
    (a full disk, say) is a ConfigError: what it held is kept, and a rerun adds the rest."""
    try:
        return _ingest(dataset, require_images, on_progress, crawled)
    except sqlite3.Error as e:
        full = "full" in str(e).lower()
        raise ConfigError(f"{database_path(dataset)} could not be written ({e}): "
                          + ("the disk is full: free some space" if full else "check the disk and its free space")
                          + " and run ingest again; the rows written before are kept, and the rerun adds the rest"
                          ) from None


def _ingest(dataset: str | os.PathLike, require_images: bool = True,
            on_progress: Callable[[int], None] | None = None, crawled: str | None = None) -> IngestReport:
    """Read the sidecars under `dataset` into its metadata database; see the module docstring.
    `crawled`: when the works were crawled, for sidecars whose mtime is their upload time."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise ConfigError(f"dataset folder {dataset} not found")
    crawl_time = _crawl_time(crawled)
    path = database_path(dataset)
    report = IngestReport(path)
    pairs = list(scan(dataset, report, require_images))
    if not report.sidecars:
        raise ConfigError(f"no sidecars found in {dataset}: expected gallery-dl --write-metadata files such as "
                          f"{dataset}/12/12345678_p0.png.json next to their images, in folders named by the first "
                          "two characters of the artwork id")
    db = open_database(path, report)
    read = mtime_upload = ascii_tags = 0
    try:
        old = {r[0]: dict(zip(COLUMNS, r)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM illusts")}
        pending: list[tuple] = []
        done = 0
        for filename, sidecar, image in pairs:
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
                    and before["sidecar_size"] == st.st_size and before["image"] == rel_image
                    and (crawl_time is None or before["crawled"] == format_time(crawl_time))):
                report.unchanged += 1
                continue
            try:
                row = parse_sidecar(sidecar.read_text(encoding="utf-8"), filename, st.st_mtime, crawl_time)
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
            read += 1
            mtime_upload += row.mtime_is_upload
            ascii_tags += row.ascii_tags
            if row.mtime_is_upload and crawl_time is None and before and before.get("crawled"):
                values["crawled"] = before["crawled"]  # a crawl time the table already had
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
    if read and ascii_tags > MOSTLY * read:
        report.warnings.append(f"the tags of {ascii_tags} of {read} sidecars are all plain ASCII: they look "
                               "translated (gallery-dl's pixiv `tags: translated`). The AI rule also knows Pixiv's "
                               "English names (AI-generated, AI illustration), but other Japanese tags are lost; "
                               "`tags: japanese` (the default) or `original` keep them")
    if read and mtime_upload > MOSTLY * read and crawl_time is None:
        report.warnings.append(f"{mtime_upload} of {read} sidecars have an mtime equal to their work's upload time "
                               "(gallery-dl's metadata `mtime: true`), so their crawl time is unknown and upload "
                               "age cannot be measured: the age_aware target refuses them. Rerun with --crawled "
                               "YYYY-MM-DD (when you crawled them)")
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


__all__ = ["DATABASE", "IngestReport", "backup_database", "copy_database", "database_path", "ingest", "migrate",
           "open_database"]
