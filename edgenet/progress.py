"""A small stderr progress bar (no dependency): images done, rate, time left.

On a terminal it redraws one line at most ~10 times a second; when stderr is not a terminal
(logs, CI) it prints a plain line every 10% so logs stay short. `--quiet` disables it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """`update(n)` after each finished image; `close()` once at the end."""

    def __init__(
        self,
        total: int,
        desc: str = "images",
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.1,
    ) -> None:
        self.total = max(0, int(total))
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.min_interval = min_interval
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._closed = False
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        frac = self.done / self.total if self.total else 1.0
        width = 28
        filled = int(round(width * frac))
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{frac * 100:5.1f}% {rate:.2f} img/s elapsed {_fmt_duration(elapsed)} "
            f"left {_fmt_duration(eta)}"
        )

    def update(self, n: int = 1) -> None:
        if not self.enabled or self._closed:
            return
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= self.min_interval or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        else:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
