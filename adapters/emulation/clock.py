"""Time for emulators and the clients that talk to them: real, or scaled so that a minute of
vendor rate limits passes in a second of a test or benchmark, or moved by hand."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class EmulatedTime:
    """`now()`, `monotonic()` and `sleep()` on one timeline.

    `scale` > 1 makes time run faster than the wall clock: `sleep(60)` returns after 60/scale real
    seconds and `monotonic()` advances `scale` seconds per real second. `advance(delta)` jumps
    ahead (token expiry, 30-day CDC windows) without sleeping. Emulators and the adapters under
    test share one instance, so both sides see the same minute."""

    def __init__(self, scale: float = 1.0, *, start: datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale
        self._real0 = time.monotonic()
        self._start = start or datetime.now(UTC)
        self._offset = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return (time.monotonic() - self._real0) * self.scale + self._offset

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        with self._lock:
            self._offset += seconds


REAL_TIME = EmulatedTime()


class VirtualTime(EmulatedTime):
    """Time that passes only when someone sleeps (or `advance`s): a benchmark learns how long a
    backlog takes to drain under a vendor's rate limits without waiting for it, and without this
    machine's own speed in the figure. Single-threaded use: one sleeper moves everyone's clock."""

    def __init__(self, *, start: datetime | None = None) -> None:
        super().__init__(1.0, start=start)

    def monotonic(self) -> float:
        with self._lock:
            return self._offset

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
