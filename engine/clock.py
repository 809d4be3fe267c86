"""Time as a seam: wall-clock milliseconds for timestamps and retention, a monotonic clock for
leases and timeouts, so tests can jump the wall clock without breaking timeouts."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in milliseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, now_ms: int = 1_700_000_000_000, monotonic: float = 0.0) -> None:
        self._now_ms = now_ms
        self._monotonic = monotonic

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, ms: int) -> None:
        """Move both clocks forward."""
        self._now_ms += ms
        self._monotonic += ms / 1000.0

    def set_wall(self, now_ms: int) -> None:
        """Jump the wall clock only (forwards or backwards)."""
        self._now_ms = now_ms
