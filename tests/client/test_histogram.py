"""The bench latency histogram: bounded relative error, merging, serialisation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moldau._histogram import Histogram

values = st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=300)


def _exact(data: list[int], percent: float) -> int:
    ordered = sorted(data)
    rank = max(1, int(np.ceil(len(ordered) * percent / 100.0)))
    return ordered[rank - 1]


@settings(max_examples=200, deadline=None)
@given(values, st.sampled_from([1.0, 50.0, 90.0, 99.0, 99.9]))
def test_percentiles_are_within_the_bucket_precision(data: list[int], percent: float) -> None:
    one, many = Histogram(), Histogram()
    for value in data:
        one.record(value)
    many.record_many(data)
    assert np.array_equal(one.counts, many.counts)
    exact = _exact(data, percent)
    reported = many.percentile(percent)
    assert abs(reported - exact) <= max(1.0, exact / 64), (exact, reported)
    assert many.percentile(100) == max(data)
    assert many.min_us == min(data)
    assert many.total == len(data)


@given(values, values)
def test_merge_and_round_trip_equal_recording_everything(a: list[int], b: list[int]) -> None:
    left, right, both = Histogram(), Histogram(), Histogram()
    left.record_many(a)
    right.record_many(b)
    both.record_many(a + b)
    left.merge(Histogram.from_list(right.to_list()))
    assert np.array_equal(left.counts, both.counts)
    assert (left.min_us, left.max_us, left.total) == (both.min_us, both.max_us, both.total)


def test_counts_and_empty() -> None:
    histogram = Histogram()
    assert histogram.percentile(99) == 0.0
    histogram.record(1000, count=99)
    histogram.record(50_000)
    assert histogram.total == 100
    assert abs(histogram.percentile(99) - 1000) <= 1000 / 64
    assert abs(histogram.percentile(99.9) - 50_000) <= 50_000 / 64
    histogram.record(-5)  # a clock step backwards counts as zero, never as a crash
    assert histogram.min_us == 0
