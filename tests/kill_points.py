"""Stop a process at a point it reaches, so that a test signals it there and not at a wall-clock guess.

A *kill point* is counted, not timed: the N-th file-system operation the process starts (link,
rename, replace, unlink, fsync, mkdir, rmdir, an `os.open` that creates or writes; it stops just
before it) or the N-th SQLite COMMIT it makes (it stops just after it). The process stops itself
with SIGSTOP; the test sees it stopped and sends the real signal (SIGKILL, SIGINT, ...) from
outside, then SIGCONT.
The same run always reaches the same points, on a fast machine or a slow one, so "the kill landed
mid-work" no longer depends on the machine's speed.

Two ways in:

- in a forked child of the test process: ``run_forked(call, spec)`` (or ``install(spec)`` in a child of
  your own) before running the command;
- as a launcher for a fresh interpreter: ``python tests/kill_points.py SPEC ARGS...`` runs
  ``python -m cityclf_core ARGS...`` with the points installed.

SPEC is ``fs:N``, ``commit:N``, ``any:N`` (both kinds counted together), or ``count`` (never stops;
with ``CITYCLF_KILL_POINTS_COUNT=FILE`` set, the totals are written there as JSON at exit).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time

FS_CALLS = ("link", "rename", "replace", "unlink", "fsync", "mkdir", "rmdir", "symlink", "truncate", "ftruncate")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

counts = {"fs": 0, "commit": 0, "any": 0}
_target: tuple[str, int] | None = None
_installed = False


def _reached(kind: str) -> None:
    counts[kind] += 1
    counts["any"] += 1
    if _target is not None and counts[_target[0]] == _target[1]:
        os.kill(os.getpid(), signal.SIGSTOP)  # the test takes it from here


def _counting(name: str, real):
    def call(*args, **kwargs):
        _reached("fs")
        return real(*args, **kwargs)
    call.__name__ = name
    return call


def _counting_open(real):
    def call(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS:
            _reached("fs")
        return real(path, flags, *args, **kwargs)
    return call


class CountingConnection(sqlite3.Connection):
    """A connection that counts its COMMITs and stops right after the chosen one (in Python, so that a
    signal the test sends there is raised in the caller, not swallowed inside SQLite)."""

    def execute(self, sql, *args, **kwargs):
        cursor = super().execute(sql, *args, **kwargs)
        if isinstance(sql, str) and sql.lstrip()[:6].upper() in ("COMMIT", "END"):
            _reached("commit")
        return cursor

    def commit(self):
        super().commit()
        _reached("commit")

    def __exit__(self, exc_type, exc, tb):
        result = super().__exit__(exc_type, exc, tb)
        if exc_type is None:
            _reached("commit")
        return result


def _counting_connect(real):
    def connect(*args, **kwargs):
        kwargs.setdefault("factory", CountingConnection)
        return real(*args, **kwargs)
    return connect


def parse(spec: str) -> tuple[str, int] | None:
    if spec == "count":
        return None
    kind, _, n = spec.partition(":")
    if kind not in counts or not n.isdigit() or int(n) < 1:
        raise ValueError(f"kill point spec {spec!r}: expected fs:N, commit:N, any:N or count")
    return kind, int(n)


def install(spec: str) -> None:
    """Count (and stop at) kill points in this process from now on."""
    global _target, _installed
    _target = parse(spec)
    if _installed:
        return
    _installed = True
    for name in FS_CALLS:
        if hasattr(os, name):
            setattr(os, name, _counting(name, getattr(os, name)))
    os.open = _counting_open(os.open)
    sqlite3.connect = _counting_connect(sqlite3.connect)


def write_counts(path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(counts, f)


# ---------------------------------------------------------------- the test's side


def run_forked(call, spec: str | None = None) -> tuple[int | None, dict]:
    """`call()` (returning an exit code) in a forked child, its output to /dev/null, kill points `spec` installed.

    With ``any:N``-style specs the child is SIGKILLed where it stops. Returns (its exit code, or None when it
    was killed; the kill points it reached when it ran to the end, e.g. with spec ``count``).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the command, then out without cleanup (as the process would end)
        code = 99
        try:
            os.close(read_end)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            if spec is not None:
                install(spec)
            code = call()
            os.write(write_end, json.dumps(counts).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    status = wait_stopped_or_exited(pid) if spec not in (None, "count") else None
    if status is None and spec not in (None, "count"):  # stopped at its kill point: kill it there
        signal_stopped(pid, signal.SIGKILL)
    with os.fdopen(read_end, "rb") as pipe:
        reached = pipe.read()
    if status is None:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, {}
    return os.WEXITSTATUS(status), json.loads(reached) if reached else {}


def wait_stopped_or_exited(pid: int) -> int | None:
    """Wait for child `pid` to stop at its kill point (None) or to exit without reaching it (its status)."""
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return None
    return status


def signal_stopped(pid: int, sig: int) -> None:
    """Send `sig` to a child stopped at its kill point, and let it run on to receive it."""
    os.kill(pid, sig)
    if sig != signal.SIGKILL:
        os.kill(pid, signal.SIGCONT)


def wait_until_stopped(pid: int, timeout: float = 600.0) -> bool:
    """For a process that is not our child: poll /proc until it is stopped (True) or gone (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        if state in ("T", "t"):
            return True
        if state in ("Z", "X"):
            return False
        time.sleep(0.005)
    raise TimeoutError(f"process {pid} reached no kill point in {timeout:.0f} s")


def main(argv: list[str]) -> None:
    spec, *args = argv
    install(spec)
    out = os.environ.get("CITYCLF_KILL_POINTS_COUNT")
    if out:
        import atexit
        atexit.register(write_counts, out)
    import runpy
    sys.argv = ["cityclf", *args]
    runpy.run_module("cityclf_core", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
