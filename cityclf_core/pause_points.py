"""A test-only hook: stop this process at a named moment, so a test can signal it exactly there.

With the environment variable CITYCLF_PAUSE_AT set to `EVENT:N[,EVENT:N...]` (e.g. `step:7,eval:10`), the
process sends itself SIGSTOP when `pause_point(EVENT, N)` is reached; the test waits until it is stopped
(/proc/PID/stat says T), sends its signal (SIGINT) and then SIGCONT. Events: `step` (inside an optimizer
step, after the backward pass), `eval` (inside an evaluation), `checkpoint` (inside a checkpoint write,
before it is renamed into place), `lock` (a store's lock just taken). Unset, a call costs a dict lookup.
"""

from __future__ import annotations

import os
import signal

_AT = {part.strip() for part in os.environ.get("CITYCLF_PAUSE_AT", "").split(",") if part.strip()}


def pause_point(event: str, n: int = 0) -> None:
    """Stop here if asked to (each point once)."""
    if _AT and f"{event}:{n}" in _AT and hasattr(signal, "SIGSTOP"):
        _AT.discard(f"{event}:{n}")
        os.kill(os.getpid(), signal.SIGSTOP)


__all__ = ["pause_point"]
