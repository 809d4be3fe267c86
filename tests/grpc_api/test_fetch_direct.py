"""A subscription served in the appender's turn (``_Subscription.push_now``): what it sends,
and that it leaves every unusual case to the subscription's task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import TopicConfig
from engine.log.partition_log import PartitionLog
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from grpc_api.config import ServerConfig
from grpc_api.fetch import TAIL_READ_RECORDS, _Subscription
from grpc_api.runtime import Runtime
from grpc_api.wire import RawBatches


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PartitionLog]:
    log = PartitionLog.open(tmp_path / "t-0", TopicConfig.from_dict({"durability": "async"}))
    yield log
    log.close()


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    runtime = Runtime(ServerConfig(worker_threads=1))
    yield runtime
    runtime.executor.shutdown()


class Socket:
    """``write_now``: keeps what it was given; refuses while ``full``."""

    def __init__(self) -> None:
        self.pushes: list[RawBatches] = []
        self.full = False

    def __call__(self, message: RawBatches) -> bool:
        if self.full:
            return False
        self.pushes.append(message)
        return True


def _append(log: PartitionLog, *values: bytes) -> int:
    return log.append(encode_batch([NewRecord(v) for v in values])).last_offset + 1


def _session(runtime: Runtime, log: PartitionLog, credit: int = 1 << 20
             ) -> tuple[_Subscription, Socket]:
    session = _Subscription(runtime, "t", 0, log, 0)
    session.credit = credit
    socket = Socket()
    session.write_now = socket
    return session, socket


def test_a_push_carries_the_new_batches_and_moves_offset_and_credit(
    runtime: Runtime, log: PartitionLog
) -> None:
    session, socket = _session(runtime, log)
    _append(log, b"a", b"b")
    assert session.push_now()  # all sent: the task sleeps on
    end = _append(log, b"c")
    assert session.push_now()
    assert [p.next_offset for p in socket.pushes] == [2, end]
    assert session.offset == end == 3
    assert session.credit == (1 << 20) - sum(len(p.record_batches) for p in socket.pushes)
    assert socket.pushes[1].record_batches == log.read(2, 1 << 20).data


def test_a_refused_write_changes_nothing_and_wakes_the_task(
    runtime: Runtime, log: PartitionLog
) -> None:
    session, socket = _session(runtime, log)
    _append(log, b"a")
    socket.full = True
    assert not session.push_now()
    assert (session.offset, session.credit, socket.pushes) == (0, 1 << 20, [])


def test_credit_bounds_a_push_and_the_rest_is_left_to_the_task(
    runtime: Runtime, log: PartitionLog
) -> None:
    first = _append(log, b"x" * 100)
    _append(log, b"y" * 100)
    size = len(log.read(0, 1 << 20).data) // 2  # one batch
    session, socket = _session(runtime, log, credit=size)
    assert not session.push_now()  # sent one batch, more is there but no credit: the task
    assert [p.next_offset for p in socket.pushes] == [first]
    assert session.credit == 0
    assert not session.push_now()  # no credit: nothing sent
    assert len(socket.pushes) == 1


def test_a_spent_credit_after_a_half_close_wakes_the_task_to_end_the_call(
    runtime: Runtime, log: PartitionLog
) -> None:
    _append(log, b"a")
    size = len(log.read(0, 1 << 20).data)
    session, socket = _session(runtime, log, credit=size)
    session.client_done = True
    assert not session.push_now()  # sent, and the call is over: the task must say so
    assert len(socket.pushes) == 1


def test_a_far_behind_subscriber_an_error_or_shutdown_are_the_tasks(
    runtime: Runtime, log: PartitionLog
) -> None:
    session, socket = _session(runtime, log)
    _append(log, *[b"r"] * (TAIL_READ_RECORDS + 1))
    assert not session.push_now()  # a read that may wait for the disk: not on this turn
    session.offset = log.high_watermark - 1
    session.error = ValueError("bad credit message")
    assert not session.push_now()
    session.error = None
    runtime.begin_shutdown()
    assert not session.push_now()
    assert socket.pushes == []


def test_without_write_now_nothing_is_pushed_directly(
    runtime: Runtime, log: PartitionLog
) -> None:
    session, _ = _session(runtime, log)
    session.write_now = None
    _append(log, b"a")
    assert not session.push_now()
    assert session.offset == 0
