"""Ctrl-C and SIGTERM during training: a request to stop at the next step boundary, never in mid-step.

A signal landing inside an optimizer step, an evaluation or a checkpoint write would leave a half-updated
state; the handler only sets a flag, and the loop, between two steps, writes its checkpoint and stops
with Interrupted (exit 130). Outside the loop the usual handlers apply.
"""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """While entered (in the main thread), SIGINT and SIGTERM set `requested` instead of interrupting."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


__all__ = ["StopRequests"]
