"""Codec throughput: encode and decode one batch of 1,000 records of 100 bytes, per codec.

Run with ``pytest benchmarks/test_codec_bench.py --benchmark-only``; records/s = 1,000 / median.
CI runs this file once with ``--benchmark-disable`` as a smoke test, so every benchmark is a
single fixed-size batch and few rounds.

"uniform" values all have 100 bytes (the numpy layout fast paths apply); "varied" values have
90-110 bytes, which exercises the general per-record loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from engine.records import (
    Codec,
    NewRecord,
    crc32c,
    decode_batch,
    decode_values,
    encode_batch,
    encode_values,
)

COUNT = 1000
TS = 1_700_000_000_000
ROUNDS = 20


def _value(i: int, size: int) -> bytes:
    text = b'{"id": %d, "user": "user-%d", "page": "/item/%d", "ms": %d}' % (i, i % 97, i, i * 7)
    return text.ljust(size, b" ")[:size]


UNIFORM = [_value(i, 100) for i in range(COUNT)]
VARIED = [_value(i, 90 + i % 21) for i in range(COUNT)]
LAYOUTS = {"uniform": UNIFORM, "varied": VARIED}


def _run(benchmark: Any, fn: Callable[[], object]) -> None:
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("codec", list(Codec), ids=[c.name.lower() for c in Codec])
def test_encode_batch(benchmark: Any, codec: Codec, layout: str) -> None:
    records = [NewRecord(v) for v in LAYOUTS[layout]]
    _run(benchmark, lambda: encode_batch(records, codec=codec, timestamp=TS))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("codec", list(Codec), ids=[c.name.lower() for c in Codec])
def test_encode_values(benchmark: Any, codec: Codec, layout: str) -> None:
    values = LAYOUTS[layout]
    expected = encode_batch([NewRecord(v) for v in values], codec=codec, timestamp=TS)
    assert encode_values(values, codec=codec, timestamp=TS) == expected
    _run(benchmark, lambda: encode_values(values, codec=codec, timestamp=TS))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("codec", list(Codec), ids=[c.name.lower() for c in Codec])
def test_decode_batch(benchmark: Any, codec: Codec, layout: str) -> None:
    buf = encode_values(LAYOUTS[layout], codec=codec, timestamp=TS)
    assert len(decode_batch(buf)[1]) == COUNT
    _run(benchmark, lambda: decode_batch(buf))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("codec", list(Codec), ids=[c.name.lower() for c in Codec])
def test_decode_values(benchmark: Any, codec: Codec, layout: str) -> None:
    buf = encode_values(LAYOUTS[layout], codec=codec, timestamp=TS)
    assert decode_values(buf) == LAYOUTS[layout]
    _run(benchmark, lambda: decode_values(buf))


def test_crc32c_100kb(benchmark: Any) -> None:
    data = os.urandom(100 * 1024)
    benchmark.pedantic(crc32c, args=(data,), rounds=200, iterations=10, warmup_rounds=5)
