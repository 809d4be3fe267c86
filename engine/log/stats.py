"""Counters a partition log keeps about itself, for metrics.

Plain integers bumped on paths that already hold the partition lock (appends) or already
iterate (reads), so they cost nanoseconds and the engine needs no metrics library; the server
reads them when it is scraped. Read counters are bumped without a lock from concurrent readers:
an increment may occasionally be lost, never double-counted, so the totals stay monotonic.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["FSYNC_BUCKETS_S", "LogStats"]

#: Upper bounds (seconds) of the fsync latency buckets; the last bucket is everything above.
FSYNC_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


@dataclass(slots=True)
class LogStats:
    """Totals since the partition was opened (they restart at 0 with the broker)."""

    appended_batches: int = 0
    appended_records: int = 0
    appended_bytes: int = 0
    read_bytes: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    #: Non-cumulative counts per bucket of :data:`FSYNC_BUCKETS_S`, plus one for larger.
    fsync_buckets: list[int] = field(default_factory=lambda: [0] * (len(FSYNC_BUCKETS_S) + 1))

    def record_fsync(self, seconds: float) -> None:
        self.fsyncs += 1
        self.fsync_seconds += seconds
        self.fsync_buckets[bisect.bisect_left(FSYNC_BUCKETS_S, seconds)] += 1
