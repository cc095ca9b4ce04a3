"""A small terminal progress bar: done/total, rate, ETA; redrawn at most ten times a second.

Shown only when the stream is a terminal (or when forced), so logs and pipes
stay clean. Messages printed through `write` clear the bar first.
"""

from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    def __init__(self, total: float, unit: str = "img", stream=None, enabled: bool | None = None,
                 label: str = "", width: int = 24):
        self.total = float(total)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled if enabled is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.width = width
        self.done = 0.0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._first: tuple[float, float] | None = None  # (time, done) at the first update

    def _eta(self) -> float:
        """Seconds left, from the rate since the first update (startup is not progress); unknown at first."""
        if self._first is None:
            return float("nan")
        t0, d0 = self._first
        elapsed, done = time.monotonic() - t0, self.done - d0
        if elapsed < 0.5 or done <= 0:
            return float("nan")
        return (self.total - self.done) * elapsed / done

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: float = 1.0) -> None:
        self.set(self.done + n)

    def set(self, done: float) -> None:
        if self._first is None:
            self._first = (time.monotonic(), self.done)
        self.done = min(float(done), self.total) if self.total else float(done)
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or self.done >= self.total:
            self._last_draw = now
            self.draw()

    def text(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        rate = self.rate
        eta = self._eta()
        label = f"{self.label} " if self.label else ""
        return (f"{label}[{bar}] {int(self.done)}/{int(self.total)} {self.unit} "
                f"{rate:.2f} {self.unit}/s ETA {_fmt_time(eta)}")

    def draw(self) -> None:
        if not self.enabled:
            return
        self.stream.write("\r\x1b[2K" + self.text())
        self.stream.flush()
        self._drawn = True

    def write(self, message: str) -> None:
        """Print a line above the bar."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[2K")
        self.stream.write(message.rstrip("\n") + "\n")
        if self.enabled and self._drawn:
            self.draw()
        self.stream.flush()

    def finish_at(self, done: float) -> None:
        """The work ended at `done` (e.g. an early stop): the bar ends full there, not half drawn."""
        self.total = float(done)
        self.set(done)

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
