"""Warnings and notes for the user, through the `cityclf` logger.

Library users see warnings on stderr through logging's default handler (or
route them as they like); the command prints them as `cityclf: warning: ...`.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("cityclf")


def warn(message: str) -> None:
    log.warning(message)


def note(message: str) -> None:
    log.info(message)


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "cityclf: warning: " if record.levelno >= logging.WARNING else "cityclf: "
        print(prefix + record.getMessage(), file=sys.stderr)


def to_stderr() -> None:
    """Print warnings and notes on stderr, once however often it is called (the command does)."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


__all__ = ["note", "to_stderr", "warn"]
