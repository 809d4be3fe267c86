"""The __consumer_offsets store: encoding, durability across clean and unclean restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import InvalidGroupRequestError
from engine.groups import OFFSETS_TOPIC, OffsetAndMetadata, OffsetStore, TopicPartition
from engine.groups.offsets import (
    MAX_METADATA_BYTES,
    MAX_RECORDS_PER_BATCH,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
)
from engine.partitioner import partition_for_key
from engine.records.batch import decode_batches, encode_batch
from engine.records.record import NewRecord

TP = TopicPartition("orders", 3)


def test_key_layout_is_deterministic_and_round_trips() -> None:
    key = encode_key("g1", TP)
    assert key == b"\x00\x01\x00\x02g1\x00\x06orders\x00\x00\x00\x03"
    assert decode_key(key) == ("g1", TP)
    with pytest.raises(ValueError, match="length"):
        decode_key(key + b"x")


def test_value_round_trips() -> None:
    value = OffsetAndMetadata(42, "ünïcode", 1234, 7)
    assert decode_value(encode_value(value)) == value
    assert encode_value(value) == encode_value(value)


def test_commit_fetch_delete(broker: Broker, clock: ManualClock) -> None:
    store = OffsetStore.open(broker, clock, partitions=4)
    assert broker.describe_topic(OFFSETS_TOPIC).config.compact
    stored = store.commit("g", {TP: OffsetAndMetadata(10, "m")}, generation=3)
    assert stored[TP] == OffsetAndMetadata(10, "m", clock.now_ms(), 3)
    assert store.fetch("g") == stored
    assert store.fetch("g", [TP, TopicPartition("orders", 0)]) == stored
    assert store.groups() == ["g"]
    assert store.delete("g") == [TP]
    assert store.fetch("g") == {}
    assert store.groups() == []
    assert store.delete("g") == []


def test_a_group_lives_in_one_partition_chosen_by_murmur2(
    broker: Broker, clock: ManualClock
) -> None:
    store = OffsetStore.open(broker, clock, partitions=4)
    store.commit(
        "group-x", {TP: OffsetAndMetadata(1), TopicPartition("a", 0): OffsetAndMetadata(2)}
    )
    expected = partition_for_key(b"group-x", 4)
    assert store.partition_for("group-x") == expected
    data = broker.read(OFFSETS_TOPIC, expected, 0, 1 << 20).data
    keys = [decode_key(r.key or b"") for r in decode_batches(data)]
    assert keys == [("group-x", TopicPartition("a", 0)), ("group-x", TP)]


def _reopen(path: Path, clock: ManualClock) -> tuple[Broker, OffsetStore]:
    broker = Broker.open(path, background=False, clock=clock)
    return broker, OffsetStore.open(broker, clock, partitions=16)  # existing count wins


def test_offsets_survive_a_clean_restart(tmp_path: Path, clock: ManualClock) -> None:
    with Broker.open(tmp_path, background=False, clock=clock) as broker:
        store = OffsetStore.open(broker, clock, partitions=4)
        store.commit("g", {TP: OffsetAndMetadata(5)})
        store.commit("g", {TP: OffsetAndMetadata(9, "later")})
        store.commit("h", {TP: OffsetAndMetadata(1)})
        store.delete("h")
    broker, store = _reopen(tmp_path, clock)
    with broker:
        assert store.partitions == 4
        assert store.fetch("g")[TP].offset == 9
        assert store.fetch("g")[TP].metadata == "later"
        assert store.groups() == ["g"]


def test_offsets_survive_an_unclean_restart(tmp_path: Path, clock: ManualClock) -> None:
    broker = Broker.open(tmp_path, background=False, clock=clock)
    store = OffsetStore.open(broker, clock, partitions=4)
    for offset in range(1, 30):
        store.commit("g", {TP: OffsetAndMetadata(offset)})
    for partition_log in broker.partitions(OFFSETS_TOPIC):
        partition_log.abandon()  # what kill -9 leaves: no flush, no clean-shutdown marker
    broker.close()
    broker, store = _reopen(tmp_path, clock)
    with broker:
        assert not broker.partition(OFFSETS_TOPIC, store.partition_for("g")).recovery.clean
        assert store.fetch("g")[TP].offset == 29


def test_commit_larger_than_one_batch(broker: Broker, clock: ManualClock) -> None:
    store = OffsetStore.open(broker, clock)
    offsets = {
        TopicPartition("t", p): OffsetAndMetadata(p) for p in range(MAX_RECORDS_PER_BATCH + 5)
    }
    store.commit("g", offsets)
    assert len(store.fetch("g")) == MAX_RECORDS_PER_BATCH + 5


def test_unreadable_records_are_skipped_on_replay(tmp_path: Path, clock: ManualClock) -> None:
    with Broker.open(tmp_path, background=False, clock=clock) as broker:
        store = OffsetStore.open(broker, clock, partitions=1)
        store.commit("g", {TP: OffsetAndMetadata(3)})
        junk = [NewRecord(b"{}", b"\x00\x09junk"), NewRecord(b"not json", encode_key("g", TP))]
        broker.append(OFFSETS_TOPIC, 0, encode_batch(junk))
    broker, store = _reopen(tmp_path, clock)
    with broker:
        assert store.skipped_records == 2
        assert store.fetch("g")[TP].offset == 3


@pytest.mark.parametrize(
    ("group", "offsets", "match"),
    [
        ("", {TP: OffsetAndMetadata(1)}, "1 to 255"),
        ("g\n", {TP: OffsetAndMetadata(1)}, "control"),
        ("g", {TP: OffsetAndMetadata(-1)}, ">= 0"),
        ("g", {TopicPartition("t", -1): OffsetAndMetadata(1)}, ">= 0"),
        ("g", {TP: OffsetAndMetadata(1, "x" * (MAX_METADATA_BYTES + 1))}, "maximum"),
    ],
)
def test_invalid_commits_are_refused(
    broker: Broker,
    clock: ManualClock,
    group: str,
    offsets: dict[TopicPartition, OffsetAndMetadata],
    match: str,
) -> None:
    store = OffsetStore.open(broker, clock)
    with pytest.raises(InvalidGroupRequestError, match=match):
        store.commit(group, offsets)
