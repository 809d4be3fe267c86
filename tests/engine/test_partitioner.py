"""Kafka-compatible key partitioning and round-robin spreading."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.partitioner import RoundRobin, murmur2, partition_for_key, py_murmur2, to_positive

# Kafka's UtilsTest.testMurmur2 (clients/src/test/java/org/apache/kafka/common/utils/).
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# Kafka's vectors have no 1-byte tail; these values of Kafka's Utils.murmur2 are the ones
# Akka's Murmur2Spec publishes for its Kafka-compatible sharding, and cover tails 1 to 4.
MORE_VECTORS = [
    (b"1", -1993445489),
    (b"12", 126087238),
    (b"123", -267702483),
    (b"1234", -1614185708),
    (b"12345", -1188365604),
]


@pytest.mark.parametrize("hash_function", [murmur2, py_murmur2], ids=["default", "python"])
@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS + MORE_VECTORS)
def test_murmur2_matches_kafka(data: bytes, expected: int, hash_function: object) -> None:
    assert hash_function(data) == expected  # type: ignore[operator]


def test_murmur2_is_the_c_copy_when_built() -> None:
    """The build installs the C loops (setup.py); a silent fallback would cost 30x per key."""
    assert type(murmur2).__name__ == "builtin_function_or_method"


@given(st.binary(max_size=300))
def test_c_and_python_murmur2_agree(data: bytes) -> None:
    assert murmur2(data) == py_murmur2(data)
    assert murmur2(bytearray(data)) == murmur2(memoryview(data)) == murmur2(data)


def test_murmur2_is_a_signed_32_bit_value() -> None:
    for n in range(200):
        value = murmur2(bytes(range(n % 256)) * (n // 50 + 1))
        assert -(2**31) <= value < 2**31
    assert isinstance(murmur2(b""), int)


def test_to_positive_clears_the_sign_bit() -> None:
    assert to_positive(-973932308) == 1173551340
    assert to_positive(-(2**31)) == 0
    assert to_positive(2**31 - 1) == 2**31 - 1
    assert to_positive(5) == 5


@pytest.mark.parametrize(("key", "hashed"), KAFKA_VECTORS)
@pytest.mark.parametrize("partitions", [1, 3, 12, 100])
def test_partition_for_key_is_kafkas(key: bytes, hashed: int, partitions: int) -> None:
    assert partition_for_key(key, partitions) == (hashed & 0x7FFFFFFF) % partitions


def test_partition_for_key_rejects_no_partitions() -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        partition_for_key(b"k", 0)


def test_keys_spread_evenly() -> None:
    partitions = 12
    keys = 24_000
    counts = Counter(partition_for_key(f"user-{i}".encode(), partitions) for i in range(keys))
    expected = keys / partitions
    assert set(counts) == set(range(partitions))
    # The hash is deterministic, so this is a fixed fact, not a flaky statistic: every
    # partition is within 5% of its fair share, and the chi-square statistic is modest.
    assert all(abs(c - expected) < 0.05 * expected for c in counts.values())
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 40


def test_round_robin_cycles() -> None:
    spreader = RoundRobin()
    assert [spreader.next(3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert RoundRobin(start=5).next(4) == 1


def test_round_robin_rejects_no_partitions() -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        RoundRobin().next(0)


def test_round_robin_is_exact_across_threads() -> None:
    spreader = RoundRobin()
    results: list[list[int]] = [[] for _ in range(8)]

    def worker(out: list[int]) -> None:
        for _ in range(5_000):
            out.append(spreader.next(5))

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(p for out in results for p in out)
    assert counts == dict.fromkeys(range(5), 8_000)
