"""Offset index: lookup cost against index size (should grow as log n), and append cost.

Run: ``pytest benchmarks/test_index_bench.py --benchmark-json=out.json`` (the JSON records the
machine and Python; numpy's version is added to each benchmark's ``extra_info``). CI runs it
once with ``--benchmark-disable`` as a smoke test.

Reference (one x86-64 core, Python 3.11, numpy 2.4): a lookup takes about 1.5 us at 1,000
entries, 2 us at 100,000 and 2.7 us at 1,000,000; an append about 1 us.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.log.offset_index import OffsetIndex

BASE = 5_000_000
OFFSET_STEP = 7  # batches of 7 records
POSITION_STEP = 4150  # one entry per index.interval.bytes of about 4 KiB


def write_sealed_index(path: Path, entries: int) -> None:
    """A trimmed index file of ``entries`` evenly spaced entries, written in one go."""
    array = np.empty(entries, dtype=OffsetIndex.ENTRY_DTYPE)
    slots = np.arange(1, entries + 1, dtype=np.uint64)
    array["relative_offset"] = slots * OFFSET_STEP
    array["position"] = slots * POSITION_STEP
    array.tofile(path)


@pytest.fixture
def opened() -> Iterator[list[OffsetIndex]]:
    """Indexes a benchmark opens, closed afterwards."""
    indexes: list[OffsetIndex] = []
    yield indexes
    for index in indexes:
        index.close()


@pytest.mark.parametrize("entries", [1_000, 100_000, 1_000_000])
def test_lookup(
    benchmark: BenchmarkFixture,
    tmp_path: Path,
    opened: list[OffsetIndex],
    entries: int,
) -> None:
    path = tmp_path / "00000000000005000000.index"
    write_sealed_index(path, entries)
    index = OffsetIndex.open(path, BASE, 10 * 1024 * 1024, writable=False)
    opened.append(index)
    index.sanity_check()
    last = BASE + entries * OFFSET_STEP
    rng = random.Random(entries)
    targets = itertools.cycle([rng.randrange(BASE, last + 100) for _ in range(1024)])

    benchmark.extra_info["numpy"] = np.__version__
    result = benchmark(lambda: index.lookup(next(targets)))

    offset, position = result
    assert (offset - BASE) % OFFSET_STEP == 0
    assert position == (offset - BASE) // OFFSET_STEP * POSITION_STEP
    assert index.lookup(last + 5) == (last, entries * POSITION_STEP)


def test_append_100k(
    benchmark: BenchmarkFixture,
    tmp_path: Path,
    opened: list[OffsetIndex],
) -> None:
    count = 100_000
    rounds = itertools.count()

    def fresh_index() -> tuple[tuple[OffsetIndex], dict[str, object]]:
        path = tmp_path / f"{next(rounds):020d}.index"
        index = OffsetIndex.open(path, 0, count * 8, writable=True)
        opened.append(index)
        return (index,), {}

    def append_all(index: OffsetIndex) -> OffsetIndex:
        append = index.append
        for i in range(1, count + 1):
            append(i * OFFSET_STEP, i * POSITION_STEP)
        return index

    benchmark.extra_info["numpy"] = np.__version__
    index = benchmark.pedantic(append_all, setup=fresh_index, rounds=3, iterations=1)
    assert index.is_full
    assert index.lookup(count * OFFSET_STEP) == (count * OFFSET_STEP, count * POSITION_STEP)
