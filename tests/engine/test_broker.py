"""Topics in a data directory: create, persist, alter, delete, and the directory lock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine.broker import Broker, BrokerSettings
from engine.errors import (
    InvalidConfigError,
    InvalidTopicError,
    StorageError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from engine.records.batch import decode_batches

from .log.conftest import make_batch


def open_broker(path: Path) -> Broker:
    return Broker.open(path, background=False)


def test_create_list_describe_and_persist(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        info = broker.create_topic("orders", 3, {"retention.ms": "60000"})
        assert (info.name, info.partitions, info.config.retention_ms) == ("orders", 3, 60000)
        broker.create_topic("payments", 1)
        assert [t.name for t in broker.list_topics()] == ["orders", "payments"]
        broker.append("orders", 2, make_batch(4))
    with open_broker(tmp_path) as broker:
        info = broker.describe_topic("orders")
        assert info.partitions == 3
        assert info.overrides == {"retention.ms": "60000"}
        records = list(decode_batches(broker.read("orders", 2, 0, 1 << 20).data))
        assert [r.offset for r in records] == [0, 1, 2, 3]


def test_topic_errors(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        broker.create_topic("orders", 2)
        with pytest.raises(TopicExistsError):
            broker.create_topic("orders", 2)
        with pytest.raises(InvalidTopicError):
            broker.create_topic("bad name", 1)
        with pytest.raises(InvalidTopicError):
            broker.create_topic("__internal", 1)
        with pytest.raises(InvalidTopicError):
            broker.create_topic("zero", 0)
        broker.create_topic("orders.v1", 1)
        with pytest.raises(InvalidTopicError, match="collides"):
            broker.create_topic("orders_v1", 1)
        with pytest.raises(InvalidConfigError):
            broker.create_topic("cfg", 1, {"no.such.key": "1"})
        assert not broker.has_topic("cfg")
        with pytest.raises(UnknownTopicError):
            broker.partition("nope", 0)
        with pytest.raises(UnknownPartitionError):
            broker.partition("orders", 2)
        internal = broker.create_topic("__consumer_offsets", 1, allow_internal=True)
        assert internal.internal
        assert "__consumer_offsets" not in [t.name for t in broker.list_topics()]
        assert "__consumer_offsets" in [t.name for t in broker.list_topics(include_internal=True)]


def test_alter_config_applies_and_persists(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        broker.create_topic("t", 1, {"retention.ms": "1000"})
        info = broker.alter_topic_config("t", {"retention.ms": None, "durability": "async"})
        assert info.overrides == {"durability": "async"}
        assert broker.partition("t", 0).config.durability == "async"
        with pytest.raises(InvalidConfigError):
            broker.alter_topic_config("t", {"durability": "sometimes"})
    with open_broker(tmp_path) as broker:
        assert broker.describe_topic("t").config.durability == "async"


def test_delete_topic_removes_data(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        broker.create_topic("gone", 2)
        broker.append("gone", 0, make_batch(1))
        broker.delete_topic("gone")
        assert not broker.has_topic("gone")
        assert not any(p.name.startswith("gone-") for p in tmp_path.iterdir())
        with pytest.raises(UnknownTopicError):
            broker.delete_topic("gone")
        broker.create_topic("gone", 1)  # the name is free again, with an empty log
        assert broker.partition("gone", 0).log_end_offset == 0


def test_create_racing_delete_of_the_same_name(tmp_path: Path) -> None:
    """Found by the gRPC fuzzer: a create right after a delete of the same name opened the
    old directory while the delete was moving it aside (FileNotFoundError, or the new topic
    on the old data)."""
    errors: list[BaseException] = []
    stop = threading.Event()
    with open_broker(tmp_path) as broker:

        def churn(create: bool) -> None:
            while not stop.is_set():
                try:
                    if create:
                        broker.create_topic("race", 2)
                        broker.append("race", 0, make_batch(3))
                    else:
                        broker.delete_topic("race")
                except (TopicExistsError, UnknownTopicError, UnknownPartitionError):
                    pass
                except Exception as exc:  # collected: the test fails on any
                    errors.append(exc)
                    stop.set()

        threads = [threading.Thread(target=churn, args=(n % 2 == 0,)) for n in range(4)]
        for thread in threads:
            thread.start()
        stop.wait(2.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert not errors, errors
        if broker.has_topic("race"):  # a surviving topic holds only its own appends
            assert broker.partition("race", 0).log_end_offset % 3 == 0
            assert broker.partition("race", 1).log_end_offset == 0


def test_data_directory_is_locked(tmp_path: Path) -> None:
    with open_broker(tmp_path), pytest.raises(StorageError, match="in use"):
        open_broker(tmp_path)


def test_unreadable_metadata_rebuilds_topics_from_directories(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        broker.create_topic("orders", 2)
        broker.append("orders", 1, make_batch(3))
    (tmp_path / "topics.json").write_text("{not json")
    with open_broker(tmp_path) as broker:
        assert broker.describe_topic("orders").partitions == 2
        assert broker.partition("orders", 1).log_end_offset == 3


def test_unclaimed_partition_directories_are_kept(tmp_path: Path) -> None:
    with open_broker(tmp_path) as broker:
        broker.create_topic("orders", 1)
    metadata = json.loads((tmp_path / "topics.json").read_text())
    metadata["topics"] = {}
    (tmp_path / "topics.json").write_text(json.dumps(metadata))
    with open_broker(tmp_path) as broker:
        assert broker.list_topics() == []
    assert (tmp_path / "orders-0").is_dir()


def test_maintenance_flushes_async_and_applies_retention(tmp_path: Path) -> None:
    settings = BrokerSettings(retention_check_interval_ms=0)
    broker = Broker.open(tmp_path, settings=settings, background=False)
    broker.create_topic("t", 1, {"segment.bytes": "4096", "retention.bytes": "4096"})
    for tag in range(30):
        broker.append("t", 0, make_batch(5, tag=tag))
    before = broker.partition("t", 0).segment_count
    broker.run_maintenance(force_retention=True)
    assert broker.partition("t", 0).segment_count < before
    assert broker.partition("t", 0).log_start_offset > 0
    broker.close()
