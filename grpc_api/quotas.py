"""Per-principal quotas: produce bytes, fetch bytes and requests per second, as token buckets.

Each principal has one bucket per configured quota. A bucket holds at most ``rate *
BURST_SECONDS`` tokens (at least one request's worth) and refills at ``rate`` per second. A call
is admitted while the bucket is not in debt (tokens >= 0) and then debits its full cost, so a
request larger than the bucket still passes once and the debt makes the following calls wait:
over any interval T a principal gets at most ``rate * T`` plus one burst plus one request.

- produce bytes: the request's serialized size, debited before the call;
- fetch bytes: the response's size, debited after it is sent (the size is known only then),
  so the NEXT call waits;
- requests: one per unary call and one per message of a client stream.

A unary call over quota is refused with RESOURCE_EXHAUSTED and the trailing metadata
``retry-after-ms`` (see :mod:`grpc_api.auth`); a stream is slowed down instead (the server stops
reading it, or delays its next push), because refusing would end it.

Concurrency: event loop thread only (no locks). The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BURST_SECONDS", "QuotaKind", "Quotas", "Throttle", "TokenBucket"]

#: A bucket holds this many seconds of its rate: short bursts pass, the long-run rate holds.
BURST_SECONDS = 0.25


class QuotaKind(StrEnum):
    PRODUCE = "produce"
    FETCH = "fetch"
    REQUESTS = "requests"


_UNITS = {QuotaKind.PRODUCE: "bytes/s", QuotaKind.FETCH: "bytes/s",
          QuotaKind.REQUESTS: "requests/s"}


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` banked, debt allowed."""

    def __init__(self, rate: float, now: float, burst_s: float = BURST_SECONDS) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_s, 1.0)
        self.tokens = self.capacity
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = max(self._last, now)

    def delay_s(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0: a call may go now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def debit(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount


@dataclass(frozen=True, slots=True)
class Throttle:
    """A refusal: which quota, its rate, and how long to wait."""

    kind: QuotaKind
    rate: int
    delay_s: float

    @property
    def retry_after_ms(self) -> int:
        return max(1, int(self.delay_s * 1000 + 0.999))

    def message(self, principal: str) -> str:
        return (
            f"{principal} is over its {self.kind} quota of {self.rate} {_UNITS[self.kind]}; "
            f"retry in {self.retry_after_ms} ms (trailing metadata retry-after-ms)"
        )


class Quotas:
    """The buckets of every principal. A rate of 0 means that quota is off.

    Args:
        produce_bytes_per_sec: Request bytes of produce calls.
        fetch_bytes_per_sec: Response bytes of fetch calls.
        requests_per_sec: Calls plus client-stream messages.
        clock: Monotonic seconds (``time.monotonic``; a fake in tests).
    """

    def __init__(
        self,
        produce_bytes_per_sec: int = 0,
        fetch_bytes_per_sec: int = 0,
        requests_per_sec: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rates = {QuotaKind.PRODUCE: produce_bytes_per_sec,
                       QuotaKind.FETCH: fetch_bytes_per_sec,
                       QuotaKind.REQUESTS: requests_per_sec}
        self._clock = clock
        self._buckets: dict[tuple[QuotaKind, str], TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return any(self._rates.values())

    def _bucket(self, kind: QuotaKind, principal: str) -> TokenBucket | None:
        rate = self._rates[kind]
        if not rate:
            return None
        bucket = self._buckets.get((kind, principal))
        if bucket is None:
            bucket = self._buckets[(kind, principal)] = TokenBucket(rate, self._clock())
        return bucket

    def admit(
        self, principal: str, *, produce_bytes: int = 0, fetch: bool = False
    ) -> Throttle | None:
        """Admit one request (debiting it) or say which quota refuses it, debiting nothing.

        Args:
            produce_bytes: The request's size when it is a produce call (else 0).
            fetch: The call returns fetched data: refused while the fetch bucket is in debt.
        """
        now = self._clock()
        wanted: list[tuple[TokenBucket, float]] = []
        worst: Throttle | None = None
        for kind, cost, applies in ((QuotaKind.REQUESTS, 1, True),
                                    (QuotaKind.PRODUCE, produce_bytes, produce_bytes > 0),
                                    (QuotaKind.FETCH, 0, fetch)):
            bucket = self._bucket(kind, principal) if applies else None
            if bucket is None:
                continue
            delay = bucket.delay_s(now)
            if delay > 0 and (worst is None or delay > worst.delay_s):
                worst = Throttle(kind, self._rates[kind], delay)
            wanted.append((bucket, cost))
        if worst is not None:
            return worst
        for bucket, amount in wanted:
            if amount:
                bucket.debit(amount, now)
        return None

    def debit_fetch(self, principal: str, response_bytes: int) -> None:
        """Charge the bytes of a response already sent; the next fetch call pays the debt."""
        bucket = self._bucket(QuotaKind.FETCH, principal)
        if bucket is not None:
            bucket.debit(response_bytes, self._clock())
