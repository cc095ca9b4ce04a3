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
    """A clear StoreError for an SQLite error on the store at `path`."""
    text = str(e)
    if any(word in text.lower() for word in DAMAGE):
        return StoreError(
            f"store {path} is damaged ({text}){' while ' + doing if doing else ''}; nothing was changed in it. "
            f"Restore it from a backup, or save what can be read with `sqlite3 {path} .recover | sqlite3 NEW.db` "
            "and use NEW.db")
    if "readonly" in text.replace(" ", "").lower():
        return read_only_error(path, text)
    if "locked" in text.lower() or "busy" in text.lower():
        return StoreError(f"store {path} is busy: another program holds it ({text}); try again when it is done")
    return StoreError(f"store {path} cannot be used ({text})")


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
