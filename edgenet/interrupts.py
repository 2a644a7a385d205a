"""Ctrl-C and SIGTERM during a run: the first one asks the run to stop after the image in hand
(what is done is saved), a second Ctrl-C aborts at once."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(Exception):
    """Raised inside the run loop when SIGINT/SIGTERM asked us to stop."""


class SignalGuard:
    """Turns the first SIGINT/SIGTERM into a stop request; a second SIGINT aborts at once.

    Handlers are installed only from the main thread (Python allows no other) and only while
    the guard is entered; `check()` raises `Interrupted` once a stop was requested.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
