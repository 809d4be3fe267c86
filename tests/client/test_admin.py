"""Admin and AsyncAdmin: every AdminService call, and the errors they map to."""

from __future__ import annotations

import asyncio

import pytest

import moldau
from moldau import Admin, AsyncAdmin, Producer


def test_topic_lifecycle(address: str) -> None:
    with Admin(address) as admin:
        created = admin.create_topic("admin-life", 3, {"retention.ms": "3600000"})
        assert created.partition_count == 3
        assert created.overrides == {"retention.ms": "3600000"}
        assert created.configs["retention.ms"] == "3600000"
        assert "segment.bytes" in created.configs
        names = [t.name for t in admin.list_topics()]
        assert "admin-life" in names
        altered = admin.alter_topic_config("admin-life", {"segment.ms": "60000"},
                                           ["retention.ms"])
        assert altered.overrides == {"segment.ms": "60000"}
        described = admin.describe_topic("admin-life")
        assert [p.partition for p in described.partitions] == [0, 1, 2]
        assert described.partitions[0].high_watermark == 0
        admin.delete_topic("admin-life")
        assert "admin-life" not in [t.name for t in admin.list_topics()]


def test_list_offsets(address: str, topic: str) -> None:
    with Producer(address) as producer:
        for i in range(10):  # one batch each: the broker's time index is per batch
            producer.send(topic, b"x", timestamp=1_000 + i).result(10)
    with Admin(address) as admin:
        assert [o.offset for o in admin.list_offsets(topic, "earliest")] == [0]
        (latest,) = admin.list_offsets(topic, "latest")
        assert (latest.offset, latest.high_watermark, latest.log_start_offset) == (10, 10, 0)
        assert admin.list_offsets(topic, 1_004, partitions=[0])[0].offset == 4
        with pytest.raises(ValueError, match="offset spec"):
            admin.list_offsets(topic, "middle")  # type: ignore[arg-type]


def test_errors_carry_code_and_message(address: str, topic: str) -> None:
    with Admin(address) as admin:
        with pytest.raises(moldau.TopicExistsError) as exists:
            admin.create_topic(topic)
        assert exists.value.code.name == "ALREADY_EXISTS"
        assert "already exists" in exists.value.message
        with pytest.raises(moldau.TopicNotFoundError):
            admin.delete_topic("no-such-topic")
        with pytest.raises(moldau.InvalidRequestError):
            admin.create_topic("bad/name")
        with pytest.raises(moldau.InvalidRequestError):
            admin.alter_topic_config(topic, {"retention.ms": "soon"})
    with Admin("127.0.0.1:1") as admin, pytest.raises(moldau.ConnectionFailedError,
                                                      match=r"127\.0\.0\.1:1"):
        admin.list_topics()
    admin.close()  # idempotent
    with pytest.raises(moldau.ClientClosedError):
        admin.list_topics()


def test_async_admin(address: str) -> None:
    async def run() -> list[str]:
        async with AsyncAdmin(address) as admin:
            await admin.create_topic("async-admin", 2)
            description = await admin.describe_topic("async-admin")
            offsets = await admin.list_offsets("async-admin", "earliest")
            await admin.delete_topic("async-admin")
            return [description.name, str(len(offsets))]

    assert asyncio.run(run()) == ["async-admin", "2"]
