"""AdminService over a real server: topic lifecycle, configs, offsets and their errors."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from moldau.v1 import admin_pb2, common_pb2, produce_pb2
from tests.integration.support import Stubs

S = grpc.StatusCode
Spec = common_pb2.OffsetSpec


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_create_list_describe_delete(stubs: Stubs, new_topic: Callable[..., str]) -> None:
    name = new_topic(3, {"retention.ms": "60000"})
    listed = {t.name: t for t in stubs.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics}
    assert listed[name].partition_count == 3
    assert dict(listed[name].overrides) == {"retention.ms": "60000"}
    topic = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name)).topic
    assert [p.partition for p in topic.partitions] == [0, 1, 2]
    first = topic.partitions[0]
    assert (first.log_start_offset, first.high_watermark, first.log_end_offset) == (0, 0, 0)
    assert first.segment_count == 1
    assert first.read_only_reason == ""
    assert topic.configs["retention.ms"] == "60000"
    assert topic.configs["cleanup.policy"] == "delete"  # defaults are listed too
    assert dict(topic.overrides) == {"retention.ms": "60000"}

    stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name=name))
    names = {t.name for t in stubs.admin.ListTopics(admin_pb2.ListTopicsRequest()).topics}
    assert name not in names
    code, _ = _code(lambda: stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name)))
    assert code == S.NOT_FOUND


def test_describe_reports_sizes_after_produce(stubs: Stubs, topic: str) -> None:
    batch = encode_batch([NewRecord(b"x" * 100) for _ in range(10)])
    stubs.produce.Produce(
        produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
    )
    part = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic)).topic.partitions[0]
    assert (part.high_watermark, part.log_end_offset) == (10, 10)
    assert part.size_bytes == len(batch)


def test_alter_config_sets_and_resets(stubs: Stubs, new_topic: Callable[..., str]) -> None:
    name = new_topic(1, {"retention.ms": "60000"})
    topic = stubs.admin.AlterTopicConfig(
        admin_pb2.AlterTopicConfigRequest(
            name=name, set={"retention.bytes": "1048576"}, reset=["retention.ms"]
        )
    ).topic
    assert dict(topic.overrides) == {"retention.bytes": "1048576"}
    assert topic.configs["retention.ms"] == str(7 * 24 * 3600 * 1000)  # back to the default
    described = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name)).topic
    assert dict(described.overrides) == {"retention.bytes": "1048576"}


def test_list_offsets(stubs: Stubs, new_topic: Callable[..., str]) -> None:
    name = new_topic(2)
    now = int(time.time() * 1000)
    for ts in (now - 3_000, now - 2_000, now - 1_000):
        batch = encode_batch([NewRecord(b"v", timestamp=ts)])
        stubs.produce.Produce(
            produce_pb2.ProduceRequest(topic=name, partition=0, record_batch=batch)
        )

    def offsets(spec: common_pb2.OffsetSpec, partitions: list[int]) -> list[tuple[int, int]]:
        reply = stubs.admin.ListOffsets(
            admin_pb2.ListOffsetsRequest(topic=name, partitions=partitions, spec=spec)
        )
        return [(o.partition, o.offset) for o in reply.offsets]

    assert offsets(Spec(kind=Spec.EARLIEST), []) == [(0, 0), (1, 0)]
    assert offsets(Spec(kind=Spec.LATEST), []) == [(0, 3), (1, 0)]
    assert offsets(Spec(kind=Spec.TIMESTAMP, timestamp_ms=now - 2_500), [0]) == [(0, 1)]
    assert offsets(Spec(kind=Spec.TIMESTAMP, timestamp_ms=now), [0]) == [(0, 3)]
    code, _ = _code(lambda: offsets(Spec(), [0]))
    assert code == S.INVALID_ARGUMENT
    code, _ = _code(lambda: offsets(Spec(kind=Spec.LATEST), [5]))
    assert code == S.NOT_FOUND


@pytest.mark.parametrize(
    ("name", "partitions", "configs", "words"),
    [
        ("bad name!", 1, {}, "name"),
        ("", 1, {}, ""),
        ("zero-partitions", 0, {}, "partitions"),
        ("bad-key", 1, {"retention.mss": "1"}, "retention.mss"),
        ("bad-value", 1, {"retention.ms": "soon"}, "retention.ms"),
        ("bad-range", 1, {"segment.bytes": "1"}, "segment.bytes"),
    ],
)
def test_create_topic_bad_input_is_invalid_argument(
    stubs: Stubs, name: str, partitions: int, configs: dict[str, str], words: str
) -> None:
    code, details = _code(
        lambda: stubs.admin.CreateTopic(
            admin_pb2.CreateTopicRequest(name=name, partitions=partitions, configs=configs)
        )
    )
    assert code == S.INVALID_ARGUMENT
    assert words in details


def test_create_existing_topic_is_already_exists(stubs: Stubs, topic: str) -> None:
    code, details = _code(
        lambda: stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=1))
    )
    assert code == S.ALREADY_EXISTS
    assert topic in details


def test_unknown_topic_errors(stubs: Stubs) -> None:
    for call in (
        lambda: stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="no-such-topic")),
        lambda: stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="no-such-topic")),
        lambda: stubs.admin.AlterTopicConfig(
            admin_pb2.AlterTopicConfigRequest(name="no-such-topic", set={"flush.ms": "5"})
        ),
    ):
        code, details = _code(call)
        assert code == S.NOT_FOUND
        assert "no-such-topic" in details


def test_alter_config_errors(stubs: Stubs, topic: str) -> None:
    def alter(**fields: object) -> object:
        return stubs.admin.AlterTopicConfig(admin_pb2.AlterTopicConfigRequest(name=topic, **fields))

    code, details = _code(lambda: alter(set={"flush.ms": "5"}, reset=["flush.ms"]))
    assert (code, "flush.ms" in details) == (S.INVALID_ARGUMENT, True)
    code, details = _code(lambda: alter(set={"no.such.key": "5"}))
    assert (code, "no.such.key" in details) == (S.INVALID_ARGUMENT, True)
    code, _ = _code(lambda: alter(set={"durability": "sometimes"}))
    assert code == S.INVALID_ARGUMENT
