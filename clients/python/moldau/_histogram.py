"""A latency histogram in the HDR style: log-linear buckets, bounded relative error.

Values are microseconds. Below 128 every value has its own bucket; above, each power of two is
split into 64 equal buckets, so a reported percentile is within 1/64 (1.6 %) of the true value
whatever the range, with a fixed ~2,400 counters up to a day. Recording many values at once
(a batch acknowledged together) is one numpy call, which keeps the measurement from costing
more than the thing measured. Histograms merge by adding counters, so the processes of a
multi-producer run each keep one and the parent adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Histogram"]

_EXACT = 128  # values below this are counted exactly
_SUB = 64  # buckets per power of two above _EXACT
_MAX_EXPONENT = 37  # 2**37 us: 38 hours
_SIZE = _EXACT + (_MAX_EXPONENT - 6) * _SUB


def _index(value: int) -> int:
    if value < _EXACT:
        return max(value, 0)
    exponent = min(value.bit_length() - 1, _MAX_EXPONENT)
    shift = exponent - 6
    sub = min(value >> shift, 2 * _SUB - 1) - _SUB
    return _EXACT + (exponent - 7) * _SUB + sub


def _lowest(index: int) -> int:
    """The smallest value counted in bucket ``index``."""
    if index < _EXACT:
        return index
    exponent, sub = divmod(index - _EXACT, _SUB)
    shift = exponent + 1
    return (_SUB + sub) << shift


def _bucket_values() -> npt.NDArray[np.float64]:
    """A representative (middle) value per bucket."""
    lows = np.array([_lowest(i) for i in range(_SIZE + 1)], dtype=np.float64)
    return np.where(np.arange(_SIZE) < _EXACT, lows[:-1], (lows[:-1] + lows[1:] - 1) / 2)


_MIDDLES = _bucket_values()


class Histogram:
    """Counts of latencies in microseconds; not thread-safe (one recorder at a time)."""

    __slots__ = ("counts", "max_us", "min_us", "total")

    def __init__(self) -> None:
        self.counts = np.zeros(_SIZE, dtype=np.int64)
        self.total = 0
        self.max_us = 0
        self.min_us = 0

    def record(self, value_us: int, count: int = 1) -> None:
        """Count ``value_us`` ``count`` times (negative values count as 0)."""
        value_us = max(int(value_us), 0)
        self.counts[_index(value_us)] += count
        if self.total == 0 or value_us < self.min_us:
            self.min_us = value_us
        self.max_us = max(self.max_us, value_us)
        self.total += count

    def record_many(self, values_us: Sequence[int] | npt.NDArray[np.int64]) -> None:
        """Count each value once (vectorised)."""
        values = np.maximum(np.asarray(values_us, dtype=np.int64), 0)
        if values.size == 0:
            return
        exponents = np.minimum(
            np.floor(np.log2(np.maximum(values, 1))).astype(np.int64), _MAX_EXPONENT
        )
        shifts = np.maximum(exponents - 6, 0)
        subs = np.minimum(values >> shifts, 2 * _SUB - 1) - _SUB
        indexes = np.where(values < _EXACT, values, _EXACT + (exponents - 7) * _SUB + subs)
        np.add.at(self.counts, indexes, 1)
        low, high = int(values.min()), int(values.max())
        if self.total == 0 or low < self.min_us:
            self.min_us = low
        self.max_us = max(self.max_us, high)
        self.total += int(values.size)

    def merge(self, other: Histogram) -> None:
        if other.total == 0:
            return
        self.counts += other.counts
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total

    def percentile(self, percent: float) -> float:
        """The value at ``percent`` (0-100) in microseconds; 0 when empty; max at 100."""
        if self.total == 0:
            return 0.0
        if percent >= 100:
            return float(self.max_us)
        rank = max(1, int(np.ceil(self.total * percent / 100.0)))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(min(_MIDDLES[index], self.max_us))

    def percentiles_ms(self, percents: Iterable[float]) -> dict[float, float]:
        return {p: self.percentile(p) / 1000.0 for p in percents}

    def to_list(self) -> list[int]:
        """Sparse ``[index, count, ...]`` pairs plus min and max, for passing between processes."""
        nonzero = np.flatnonzero(self.counts)
        pairs = np.column_stack((nonzero, self.counts[nonzero])).ravel().tolist()
        return [self.min_us, self.max_us, *pairs]

    @classmethod
    def from_list(cls, data: Sequence[int]) -> Histogram:
        histogram = cls()
        if len(data) < 2:
            return histogram
        histogram.min_us, histogram.max_us = int(data[0]), int(data[1])
        for i in range(2, len(data), 2):
            histogram.counts[int(data[i])] += int(data[i + 1])
        histogram.total = int(histogram.counts.sum())
        return histogram
