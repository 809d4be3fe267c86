"""Offset and time index: append, lookup, truncate, trim, reopen, capacity, damage."""

from __future__ import annotations

import gc
import os
import struct
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import StorageError
from engine.log.index import CorruptIndexError, InvalidIndexAppendError
from engine.log.offset_index import OffsetIndex
from engine.log.time_index import NO_TIMESTAMP, TimeIndex

BASE = 1000
MAX_BYTES = 4096


def offset_index(tmp_path: Path, writable: bool = True, **kwargs: int | None) -> OffsetIndex:
    max_bytes = kwargs.pop("max_index_bytes", None) or MAX_BYTES
    return OffsetIndex.open(
        tmp_path / "00000000000000001000.index",
        BASE,
        max_bytes,
        writable,
        entries=kwargs.pop("entries", None),
    )


def time_index(
    tmp_path: Path, writable: bool = True, max_index_bytes: int = MAX_BYTES
) -> TimeIndex:
    return TimeIndex.open(
        tmp_path / "00000000000000001000.timeindex", BASE, max_index_bytes, writable
    )


def mapped(path: Path) -> bool:
    """Whether ``path`` appears in this process's memory maps (Linux)."""
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(str(path)) for line in maps)


# ---------------------------------------------------------------------- offset index


def test_new_index_is_preallocated_and_empty(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    assert index.entries == 0
    assert index.max_entries == MAX_BYTES // 8
    assert os.path.getsize(index.path) == MAX_BYTES
    assert index.lookup(BASE + 5) == (BASE, 0)
    assert index.last_offset == BASE
    index.close()


def test_lookup_is_a_floor_search(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    for offset, position in [(1010, 50), (1020, 400), (1030, 900)]:
        index.append(offset, position)
    assert index.lookup(0) == (BASE, 0)
    assert index.lookup(1009) == (BASE, 0)
    assert index.lookup(1010) == (1010, 50)
    assert index.lookup(1019) == (1010, 50)
    assert index.lookup(1025) == (1020, 400)
    assert index.lookup(10**15) == (1030, 900)
    assert index.entry(1) == (1020, 400)
    assert index.last_offset == 1030
    index.close()


@pytest.mark.parametrize(
    ("offset", "position", "reason"),
    [
        (1020, 900, "does not increase"),  # same offset
        (1015, 900, "does not increase"),  # lower offset
        (1030, 400, "does not increase"),  # same position
        (999, 900, "outside the segment"),
        (BASE + 2**32, 900, "outside the segment"),
        (1030, 2**32, "uint32"),
    ],
)
def test_append_refuses_entries_that_break_the_invariants(
    tmp_path: Path, offset: int, position: int, reason: str
) -> None:
    index = offset_index(tmp_path)
    index.append(1020, 400)
    with pytest.raises(InvalidIndexAppendError, match=reason):
        index.append(offset, position)
    assert index.entries == 1
    index.close()


def test_append_at_largest_relative_offset(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(BASE + 2**32 - 1, 2**32 - 1)
    assert index.lookup(BASE + 2**40) == (BASE + 2**32 - 1, 2**32 - 1)
    index.close()


def test_entry_out_of_range(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    with pytest.raises(IndexError):
        index.entry(1)
    with pytest.raises(IndexError):
        index.entry(-1)
    index.close()


def test_truncate_to_offset(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    for i in range(1, 6):
        index.append(BASE + 10 * i, 100 * i)
    index.truncate_to_offset(10**12)
    assert index.entries == 5
    index.truncate_to_offset(1031)
    assert index.entries == 3
    index.truncate_to_offset(1030)
    assert index.entries == 2
    assert index.lookup(1035) == (1020, 200)
    index.append(1025, 250)  # appends continue after the cut
    assert index.lookup(1035) == (1025, 250)
    index.truncate_to_offset(BASE)
    assert index.entries == 0
    index.close()


def test_truncate_to_entries(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.append(1020, 60)
    index.truncate_to_entries(1)
    assert index.last_offset == 1010
    with pytest.raises(ValueError, match="truncate"):
        index.truncate_to_entries(2)
    index.close()


def test_fetch_upper_bound_position(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.append(1020, 400)
    assert index.fetch_upper_bound_position(0) == 50
    assert index.fetch_upper_bound_position(1009) == 50
    assert index.fetch_upper_bound_position(1010) == 400
    assert index.fetch_upper_bound_position(1019) == 400
    assert index.fetch_upper_bound_position(1020) is None
    assert index.fetch_upper_bound_position(BASE + 2**33) is None
    index.close()


def test_full_index_refuses_appends(tmp_path: Path) -> None:
    index = offset_index(tmp_path, max_index_bytes=3 * 8 + 5)  # rounded down to 3 entries
    assert index.max_entries == 3
    assert os.path.getsize(index.path) == 24
    for i in range(3):
        assert not index.is_full
        index.append(BASE + i + 1, i + 1)
    assert index.is_full
    with pytest.raises(InvalidIndexAppendError, match="full"):
        index.append(BASE + 10, 10)
    index.close()


def test_trim_then_reopen_gives_the_same_entries(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    entries = [(BASE + 7 * i + 1, 4096 * i + 13) for i in range(20)]
    for offset, position in entries:
        index.append(offset, position)
    index.trim()
    assert os.path.getsize(index.path) == 20 * 8
    assert index.is_full
    index.flush()
    index.close()

    reopened = offset_index(tmp_path, writable=False)
    reopened.sanity_check()
    assert [reopened.entry(i) for i in range(reopened.entries)] == entries
    assert reopened.lookup(BASE + 30) == entries[4]
    with pytest.raises(InvalidIndexAppendError, match="read-only"):
        reopened.append(BASE + 1000, 10**6)
    reopened.close()

    # The active segment's index reopened for appends gets its preallocation back.
    active = offset_index(tmp_path)
    assert active.entries == 20
    assert active.max_entries == MAX_BYTES // 8
    active.append(BASE + 1000, 10**6)
    assert active.lookup(BASE + 2000) == (BASE + 1000, 10**6)
    active.close()


def test_file_layout_is_little_endian_uint32_pairs(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(BASE + 1, 0x01020304)
    index.append(BASE + 0x10000, 0x7FFFFFFF)
    index.trim()
    index.close()
    raw = (tmp_path / "00000000000000001000.index").read_bytes()
    assert raw == struct.pack("<II", 1, 0x01020304) + struct.pack("<II", 0x10000, 0x7FFFFFFF)


def test_resize_makes_room_and_keeps_entries(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    for i in range(1, 11):
        index.append(BASE + i, i * 10)
    index.trim()
    assert index.is_full
    index.resize(8 * 16)
    assert (index.entries, index.max_entries) == (10, 16)
    assert os.path.getsize(index.path) == 128
    index.append(BASE + 11, 110)
    index.resize(8)  # never below the valid entries
    assert (index.entries, index.max_entries) == (11, 11)
    assert index.lookup(BASE + 11) == (BASE + 11, 110)
    index.close()


def test_reset_makes_a_read_only_index_rebuildable(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.trim()
    index.close()
    sealed = offset_index(tmp_path, writable=False)
    assert sealed.entries == 1
    sealed.reset()
    assert sealed.writable
    assert (sealed.entries, sealed.max_entries) == (0, MAX_BYTES // 8)
    sealed.append(1005, 20)
    assert sealed.lookup(1010) == (1005, 20)
    sealed.close()


def test_entries_override(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.append(1020, 60)
    index.close()  # untrimmed: the size says "full of entries", so recovery passes a count
    reopened = offset_index(tmp_path, entries=0)
    assert reopened.entries == 0
    reopened.close()
    with pytest.raises(ValueError, match="holds"):
        offset_index(tmp_path, entries=MAX_BYTES // 8 + 1)


def test_close_releases_the_mapping_and_delete_removes_the_file(tmp_path: Path) -> None:
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps")
    index = offset_index(tmp_path)
    index.append(1010, 50)
    assert mapped(index.path)
    index.close()
    index.close()  # idempotent
    gc.collect()
    assert not mapped(index.path)
    assert index.entries == 0
    assert index.lookup(1020) == (BASE, 0)
    with pytest.raises(ValueError, match="closed"):
        index.trim()
    assert index.delete()
    assert not index.path.exists()
    assert not index.delete()


def test_flush_is_a_no_op_when_clean_or_read_only(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.flush()
    index.append(1010, 50)
    index.flush()
    index.flush()
    index.trim()
    index.flush()
    index.close()
    index.flush()
    sealed = offset_index(tmp_path, writable=False)
    sealed.flush()
    sealed.close()


def test_empty_trimmed_index_reopens(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.trim()
    assert os.path.getsize(index.path) == 0
    index.close()
    sealed = offset_index(tmp_path, writable=False)
    assert (sealed.entries, sealed.max_entries) == (0, 0)
    assert sealed.lookup(BASE + 10) == (BASE, 0)
    sealed.sanity_check()
    sealed.close()


# ---------------------------------------------------------------------- sanity checks


def test_sanity_check_catches_a_non_increasing_entry(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    for i in range(1, 5):
        index.append(BASE + 10 * i, 100 * i)
    index.trim()
    index.close()
    path = tmp_path / "00000000000000001000.index"
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 2 * 8, 5)  # entry 2: relative offset 30 -> 5
    path.write_bytes(bytes(raw))

    damaged = offset_index(tmp_path, writable=False)
    with pytest.raises(CorruptIndexError, match="entry 2 relative_offset 5") as caught:
        damaged.sanity_check()
    assert isinstance(caught.value, StorageError)
    assert isinstance(caught.value, ValueError)  # what the segment's open path catches
    damaged.close()


def test_sanity_check_catches_a_non_increasing_position(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    for i in range(1, 4):
        index.append(BASE + i, 100 * i)
    index.trim()
    index.close()
    path = tmp_path / "00000000000000001000.index"
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 2 * 8 + 4, 100)
    path.write_bytes(bytes(raw))
    damaged = offset_index(tmp_path, writable=False)
    with pytest.raises(CorruptIndexError, match="position"):
        damaged.sanity_check()
    damaged.close()


def test_sanity_check_catches_a_partial_entry(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.trim()
    index.close()
    with open(tmp_path / "00000000000000001000.index", "ab") as file:
        file.write(b"\x01\x02\x03")
    damaged = offset_index(tmp_path, writable=False)
    assert damaged.entries == 1
    with pytest.raises(CorruptIndexError, match="multiple of the 8-byte entry"):
        damaged.sanity_check()
    damaged.close()


def test_sanity_check_catches_an_untrimmed_file_read_by_its_size(tmp_path: Path) -> None:
    index = offset_index(tmp_path)
    index.append(1010, 50)
    index.close()  # a crash: the preallocated zeros are still there
    stale = offset_index(tmp_path)
    assert stale.entries == MAX_BYTES // 8
    with pytest.raises(CorruptIndexError):
        stale.sanity_check()
    stale.close()


# ---------------------------------------------------------------------- time index


def test_time_index_keeps_the_running_maximum(tmp_path: Path) -> None:
    index = time_index(tmp_path)
    assert index.max_timestamp_entry == (NO_TIMESTAMP, BASE)
    assert not index.maybe_append(-1, BASE)  # "no timestamp" is never indexed
    assert index.maybe_append(500, 1010)
    assert not index.maybe_append(500, 1020)  # not above the last
    assert not index.maybe_append(400, 1020)
    assert index.maybe_append(700, 1030)
    assert index.entries == 2
    assert index.max_timestamp_entry == (700, 1030)
    assert index.entry(0) == (500, 1010)
    assert index.lookup(499) == (NO_TIMESTAMP, BASE)
    assert index.lookup(500) == (500, 1010)
    assert index.lookup(699) == (500, 1010)
    assert index.lookup(2**70) == (700, 1030)
    assert index.lookup(-(2**70)) == (NO_TIMESTAMP, BASE)
    index.close()


def test_time_index_refuses_offsets_going_back(tmp_path: Path) -> None:
    index = time_index(tmp_path)
    index.maybe_append(500, 1010)
    with pytest.raises(InvalidIndexAppendError, match="below the last"):
        index.maybe_append(600, 1009)
    assert index.maybe_append(600, 1010)  # same offset is fine: a later max in one batch
    with pytest.raises(InvalidIndexAppendError, match="outside"):
        index.maybe_append(700, 999)
    index.close()


def test_time_index_truncate_to_offset(tmp_path: Path) -> None:
    index = time_index(tmp_path)
    for i in range(1, 6):
        index.maybe_append(100 * i, BASE + 10 * i)
    index.truncate_to_offset(1030)
    assert index.max_timestamp_entry == (200, 1020)
    index.truncate_to_offset(BASE)
    assert index.entries == 0
    assert index.maybe_append(50, 1001)
    index.close()


def test_time_index_reserves_its_last_slot_for_sealing(tmp_path: Path) -> None:
    index = time_index(tmp_path, max_index_bytes=3 * 12)
    assert index.max_entries == 3
    index.maybe_append(1, 1001)
    index.maybe_append(2, 1002)
    assert index.is_full  # the segment rolls now ...
    assert index.maybe_append(3, 1003)  # ... and sealing still fits its entry
    with pytest.raises(InvalidIndexAppendError, match="full"):
        index.maybe_append(4, 1004)
    index.close()


def test_time_index_layout_trim_and_reopen(tmp_path: Path) -> None:
    index = time_index(tmp_path)
    index.maybe_append(1_700_000_000_000, 1010)
    index.maybe_append(1_700_000_000_500, 1020)
    assert index.entry_size == 12
    index.trim()
    index.close()
    raw = (tmp_path / "00000000000000001000.timeindex").read_bytes()
    assert raw == struct.pack("<qI", 1_700_000_000_000, 10) + struct.pack(
        "<qI", 1_700_000_000_500, 20
    )
    sealed = time_index(tmp_path, writable=False)
    sealed.sanity_check()
    assert sealed.max_timestamp_entry == (1_700_000_000_500, 1020)
    assert sealed.lookup(1_700_000_000_499) == (1_700_000_000_000, 1010)
    sealed.close()


def test_time_index_sanity_check(tmp_path: Path) -> None:
    index = time_index(tmp_path)
    for i in range(1, 4):
        index.maybe_append(100 * i, BASE + i)
    index.trim()
    index.close()
    path = tmp_path / "00000000000000001000.timeindex"
    raw = bytearray(path.read_bytes())
    struct.pack_into("<q", raw, 2 * 12, 150)  # entry 2: 300 -> 150, below entry 1
    path.write_bytes(bytes(raw))
    damaged = time_index(tmp_path, writable=False)
    with pytest.raises(CorruptIndexError, match="entry 2 timestamp 150"):
        damaged.sanity_check()
    damaged.close()


# ---------------------------------------------------------------------- properties


@st.composite
def offset_entries(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Strictly increasing (offset, position) pairs inside one segment."""
    gaps = draw(st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 10**6)), max_size=200))
    entries, offset, position = [], BASE, 0
    for offset_gap, position_gap in gaps:
        offset += offset_gap
        position += position_gap
        entries.append((offset, position))
    return entries


@settings(max_examples=150, deadline=None)
@given(entries=offset_entries(), targets=st.lists(st.integers(0, BASE + 10**6 + 10), max_size=50))
def test_offset_lookup_matches_a_brute_force_floor(
    entries: list[tuple[int, int]], targets: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        index = offset_index(Path(directory), max_index_bytes=8 * 256)
        for offset, position in entries:
            index.append(offset, position)
        probes = targets + [o for o, _ in entries] + [o - 1 for o, _ in entries]
        for target in probes:
            below = [e for e in entries if e[0] <= target]
            assert index.lookup(target) == (below[-1] if below else (BASE, 0))
            above = [p for o, p in entries if o > target]
            assert index.fetch_upper_bound_position(target) == (above[0] if above else None)
        index.trim()
        index.close()
        reopened = offset_index(Path(directory), writable=False)
        reopened.sanity_check()
        assert [reopened.entry(i) for i in range(reopened.entries)] == entries
        reopened.close()


@settings(max_examples=100, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 1000)), max_size=150
    ),
    targets=st.lists(st.integers(-(2**64), 2**64), max_size=30),
    cut=st.integers(0, 200_000),
)
def test_time_lookup_matches_a_brute_force_floor(
    samples: list[tuple[int, int]], targets: list[int], cut: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        index = time_index(Path(directory), max_index_bytes=12 * 256)
        expected: list[tuple[int, int]] = []
        offset = BASE
        for timestamp, gap in samples:
            offset += gap
            grows = timestamp > (expected[-1][0] if expected else NO_TIMESTAMP)
            assert index.maybe_append(timestamp, offset) == grows
            if grows:
                expected.append((timestamp, offset))
        for target in targets + [t for t, _ in expected]:
            below = [e for e in expected if e[0] <= target]
            assert index.lookup(target) == (below[-1] if below else (NO_TIMESTAMP, BASE))
        index.sanity_check()
        index.truncate_to_offset(BASE + cut)
        kept = [e for e in expected if e[1] < BASE + cut]
        assert [index.entry(i) for i in range(index.entries)] == kept
        index.close()


# ---------------------------------------------------------------------- concurrency


def test_readers_see_a_consistent_prefix_while_the_writer_appends(tmp_path: Path) -> None:
    index = offset_index(tmp_path, max_index_bytes=8 * 20_000)
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            offset, position = index.lookup(BASE + 10**9)
            # Every entry is (BASE + 2k, 3k); a torn read would break the relation.
            if offset != BASE and (offset - BASE) * 3 != position * 2:
                errors.append(f"torn entry ({offset}, {position})")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for k in range(1, 20_000):
        index.append(BASE + 2 * k, 3 * k)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert index.lookup(BASE + 10**9) == (BASE + 2 * 19_999, 3 * 19_999)
    index.close()
