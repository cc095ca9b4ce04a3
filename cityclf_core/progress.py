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
    """done/total, and a rate and an ETA once they are measured.

    The rate is measured from the last update before the first half second of updates ended: work
    that is counted at once at the start (files a store already has, a resumed run) is not a rate,
    and neither is the time spent loading before the first update. Until there is a measurement the
    bar shows no rate and `ETA ?`.
    """

    def __init__(self, total: float, unit: str = "img", stream=None, enabled: bool | None = None,
                 label: str = "", width: int = 24, clock=time.monotonic):
        self.total = float(total)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled if enabled is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.width = width
        self.done = 0.0
        self.clock = clock
        self._last_draw = 0.0
        self._drawn = False
        self._first: float | None = None  # time of the first update
        self._last: tuple[float, float] | None = None  # (time, done) at the latest update
        self._ref: tuple[float, float] | None = None  # (time, done) the rate is measured from

    def _measured(self) -> tuple[float, float] | None:
        """(rate per second, seconds left), or None before there is a real measurement."""
        if self._ref is None:
            return None
        t0, d0 = self._ref
        elapsed, done = self.clock() - t0, self.done - d0
        if elapsed < 0.5 or done <= 0:
            return None
        rate = done / elapsed
        return rate, (self.total - self.done) / rate

    @property
    def rate(self) -> float:
        measured = self._measured()
        return measured[0] if measured else float("nan")

    def update(self, n: float = 1.0) -> None:
        self.set(self.done + n)

    def set(self, done: float) -> None:
        now = self.clock()
        if self._first is None:
            self._first = now
        elif self._ref is None and now - self._first >= 0.5:
            self._ref = self._last
        self._last = (now, float(done))
        self.done = min(float(done), self.total) if self.total else float(done)
        if now - self._last_draw >= 0.1 or self.done >= self.total:
            self._last_draw = now
            self.draw()

    def text(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        label = f"{self.label} " if self.label else ""
        measured = self._measured()
        speed = (f" {measured[0]:.2f} {self.unit}/s ETA {_fmt_time(measured[1])}" if measured else " ETA ?")
        return f"{label}[{bar}] {int(self.done)}/{int(self.total)} {self.unit}{speed}"

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
