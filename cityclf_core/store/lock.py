"""One embedding run per store at a time: a second is refused at once, before any CLIP is loaded.

SQLite would let two runs write in turns, but each would embed the same files
(a file is claimed only when its row is committed), doubling the work. The
lock is an advisory `flock` on the store file, released by the system when the
holder ends however it ends (a kill included), so a stale lock cannot remain.
Where `flock` does not exist (Windows), runs are not serialised.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class StoreInUse(StoreError):
    """Another run is embedding into this store."""


@contextmanager
def embedding_run(path: str | os.PathLike) -> Iterator[None]:
    """Hold the store's embedding lock for the block; StoreInUse if another run holds it."""
    if fcntl is None:
        yield
        return
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(
                f"store {path} is in use: another `cityclf embed` (or `score PATH --store`) is embedding into it; "
                "nothing was done. Wait for it to finish and run this again (it will only add what is missing), "
                "or embed into another store (e.g. with --shard) and combine them with `cityclf merge`.") from None
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["StoreInUse", "embedding_run"]
