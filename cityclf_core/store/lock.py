"""One writer per store at a time: every command that writes a store takes its lock; readers never do.

SQLite would let two writers take turns, but their work would not add up: two embedding runs would embed
the same files, and a merge (which copies the store, merges into the copy and renames it over the store)
would drop whatever another writer committed meanwhile. So `store_writer` holds an advisory `flock` on
the store file for the whole command: `embed`, `score PATH --store`, `score --store`, `query --move`,
`merge`, `prune`, `train` and `review --store` (and the Ray engine's import into a store). A second
writer waits up to CITYCLF_LOCK_WAIT seconds (default 30), saying whom it waits for, then is refused
(exit 2) naming the holder. The system releases the lock however the holder ends (a kill included), so
a stale lock cannot remain. A store renamed over (a merge) is locked again under its new file. Where
`flock` does not exist (Windows), writers are not serialised.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import StoreError
from ..pause_points import pause_point

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

WAIT_ENV = "CITYCLF_LOCK_WAIT"
DEFAULT_WAIT = 30.0
POLL = 0.2  # seconds between tries while waiting


class StoreInUse(StoreError):
    """Another command is writing this store."""


def lock_wait() -> float:
    """How long a second writer waits (CITYCLF_LOCK_WAIT seconds; a bad value is an error naming it)."""
    from ..numbers import real

    text = os.environ.get(WAIT_ENV)
    return DEFAULT_WAIT if text in (None, "") else real(0.0, 86400.0).check(text, WAIT_ENV)


def holder(path: str | os.PathLike) -> str:
    """Who holds the lock on `path`, as well as the system says: 'process 123 (cityclf embed ...)'."""
    try:
        st = os.stat(path)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            pids = [line.split()[4] for line in f if "FLOCK" in line and line.split()[5] == ident]
    except (OSError, IndexError):
        pids = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = [os.path.basename(w.decode(errors="replace")) if i < 2 else w.decode(errors="replace")
                         for i, w in enumerate(f.read().split(b"\0")) if w]
            return f"process {pid} ({' '.join(words)[:200]})"
        except OSError:
            return f"process {pid}"
    return "another cityclf command"


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (a merge renames a new store over the old one)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def store_writer(path: str | os.PathLike, wait: float | None = None,
                 say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `path`'s write lock for the block (the file is made, empty, if missing). Another writer holding
    it: wait up to `wait` seconds (default: CITYCLF_LOCK_WAIT, else 30), telling `say` once, then StoreInUse."""
    if fcntl is None:
        yield
        return
    path = Path(path)
    wait = lock_wait() if wait is None else wait
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"store {path} cannot be opened ({e.strerror or e})") from None
        if _try(fd) or _wait(fd, path, deadline, told or say):
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file that was renamed over meanwhile: lock the store that is there now
            told = True
            continue
        who = holder(path)
        os.close(fd)
        raise StoreInUse(
            f"store {path} is in use: {who} is writing it, and it was still writing after {wait:g} s; nothing "
            f"was done. Run this again when it has finished (set {WAIT_ENV} to wait longer), or write into "
            "another store and combine them with `cityclf merge`.")
    try:
        pause_point("lock")
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait(fd: int, path: Path, deadline: float, say) -> bool:
    """Poll the lock until `deadline`; `say` (unless already told: True) hears once whom we wait for."""
    if say is not True:
        say(f"cityclf: store {path} is being written by {holder(path)}; waiting for it "
            f"(up to {max(0.0, deadline - time.monotonic()):.0f} s, {WAIT_ENV})")
    while time.monotonic() < deadline:
        time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        if _try(fd):
            return True
    return False


__all__ = ["StoreInUse", "holder", "lock_wait", "store_writer"]
