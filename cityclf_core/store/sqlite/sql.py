"""What every part of the SQLite store shares: errors worded for users, paths as stored, transactions.

An SQLite error inside a store method becomes a StoreError naming the store
(damaged, read-only, busy): each public method of the store is `@guarded`.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
from pathlib import Path

from ...errors import StoreError
from ...pathtext import safe_text

#: SQLite's words for a file that is not (or no longer) a sound database
DAMAGE = ("malformed", "not a database", "corrupt", "disk i/o error")

def store_error(path: Path, e: sqlite3.Error, doing: str = "") -> StoreError:
    """A clear StoreError for an SQLite error on the store at `path`. The store is called damaged only when
    SQLite's integrity_check says so: a full disk or a failed write is not damage."""
    text = str(e)
    while_ = f" while {doing}" if doing else ""
    damage = any(word in text.lower() for word in DAMAGE)
    if "full" in text.lower() or (damage and disk_full(path)):
        return StoreError(f"store {path} could not be written{while_}: the disk is full ({text}). The unfinished "
                          "change was rolled back and the store is as it was; free some space (SQLite needs room "
                          "beside the store for its journal too) and run the command again.")
    verdict = intact(path) if damage else None
    if damage and verdict is not False:
        checked = ("it is not damaged (SQLite's integrity_check is ok)" if verdict else
                   "SQLite could not check it either, so it may well be sound")
        return StoreError(f"store {path} could not be used{while_} ({text}), but {checked}: check the disk and "
                          "the space on it, then run the command again.")
    if damage:
        return StoreError(
            f"store {path} is damaged ({text}){while_}; SQLite's integrity_check fails and nothing was changed "
            f"in it. Restore it from a backup, or save what can be read with `sqlite3 {path} .recover | sqlite3 "
            "NEW.db` and use NEW.db")
    if "readonly" in text.replace(" ", "").lower():
        return read_only_error(path, text)
    if "locked" in text.lower() or "busy" in text.lower():
        return StoreError(f"store {path} is busy: another program holds it ({text}); try again when it is done")
    return StoreError(f"store {path} cannot be used ({text})")


def intact(path: Path) -> bool | None:
    """Whether SQLite's integrity_check finds the store at `path` sound; None where the check cannot run.

    Read-only; where even that cannot open it (a write-ahead-log store on a full disk cannot make its shared
    memory file), the main file alone is checked as immutable."""
    uri = Path(path).absolute().as_uri()
    for query in ("?mode=ro", "?immutable=1"):
        try:
            db = sqlite3.connect(uri + query, uri=True, timeout=5)
        except sqlite3.Error:
            continue
        try:
            return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as e:
            if any(word in str(e).lower() for word in ("malformed", "not a database", "corrupt")):
                return False
        finally:
            db.close()
    return None


def disk_full(path: Path) -> bool:
    """Whether the file system holding `path` has no space left for us."""
    try:
        st = os.statvfs(Path(path).absolute().parent)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return st.f_bavail == 0


class ReadOnlyStore(StoreError):
    """A store that this command would have to write, but cannot."""


def read_only_error(path: Path, why: str) -> StoreError:
    return ReadOnlyStore(
        f"store {path} is read-only ({why}); nothing was changed. This command writes to the store: make it "
        "writable (and its folder: SQLite adds -wal and -shm files beside it), or copy it somewhere writable. "
        "query (without --move), grid, export and store-info only read it.")


def writable_problem(path: Path) -> str | None:
    """Why SQLite could not write the store at `path` (the file or its folder read-only), or None."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return "the file cannot be written"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} cannot be written"
    return None


def to_db(path: str):
    """A path as stored: text when it is valid UTF-8, else its bytes (lossless; see the module's notes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def from_db(value) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def error_text(message: str | None) -> str | None:
    """Free text (an error message) that may quote a non-UTF-8 name: stored with that name's bytes as \\xNN."""
    return None if message is None else safe_text(message)


class DryRun(Exception):
    """Raised inside a transaction to roll back what a dry run did."""


class Transaction:
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
        return exc_type is DryRun  # a dry run's changes are rolled back, and that is all it raised for


def guarded(method):
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


__all__ = ["DAMAGE", "DryRun", "ReadOnlyStore", "Transaction", "error_text", "from_db", "guarded", "read_only_error",
           "store_error", "to_db", "writable_problem"]
