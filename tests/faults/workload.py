"""Client workloads for the fault tests: real moldau clients recording into a History.

Each workload runs on its own thread against the broker's fixed address and keeps going
through kills and pauses: the clients reconnect by themselves. Every value written is unique
(``<writer>:<n>``) so the checker can trace it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from moldau import Consumer, Producer, TopicPartition
from moldau.errors import MoldauError
from moldau.v1 import groups_pb2, groups_pb2_grpc, queues_pb2, queues_pb2_grpc
from tests.faults.checker import History

__all__ = ["GroupReader", "ProducerLoad", "QueueWorker", "committed_offsets", "read_all"]


class ProducerLoad:
    """Sends as fast as the broker acknowledges, with at most ``window`` records unsettled."""

    def __init__(
        self,
        address: str,
        topic: str,
        writer: str,
        history: History,
        *,
        idempotent: bool,
        window: int = 2_000,
    ) -> None:
        self.topic = topic
        self.writer = writer
        self.history = history
        if idempotent:
            history.idempotent_writers.add(writer)
        self.producer = Producer(address, idempotent=idempotent, linger_ms=2,
                                 delivery_timeout_ms=300_000, retry_backoff_ms=50)
        self.failures: list[BaseException] = []
        self._window = threading.BoundedSemaphore(window)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{writer}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if not self._window.acquire(timeout=0.1):
                continue
            value = f"{self.writer}:{n}".encode()
            n += 1
            self.history.attempted.add(value)
            try:
                future = self.producer.send(self.topic, value)
            except MoldauError as exc:
                self.failures.append(exc)
                self._window.release()
                continue
            future.add_done_callback(self._settled(value))

    def _settled(self, value: bytes) -> Callable[..., None]:
        def done(future: object) -> None:
            self._window.release()
            error = future.exception()  # type: ignore[attr-defined]
            if error is not None:
                self.failures.append(error)
                return
            metadata = future.result()  # type: ignore[attr-defined]
            self.history.acked[value] = (self.writer, metadata.partition, metadata.offset)

        return done

    def stop(self) -> None:
        """Stop sending, wait for every acknowledgement, close."""
        self._stop.set()
        self._thread.join(30)
        self.producer.flush(timeout=120)
        self.producer.close(timeout=30)


class GroupReader:
    """One consumer-group member: poll, record, commit the polled positions (manual commit)."""

    def __init__(self, address: str, topic: str, group: str, history: History) -> None:
        self.topic = topic
        self.group = group
        self.history = history
        self.consumer = Consumer(address)
        self.consumer.subscribe([topic], group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False, session_timeout_ms=10_000)
        self.errors = 0
        self.last_records_at = time.monotonic()
        self.positions: dict[int, int] = {}
        self.crash = ""  # the traceback that ended the polling thread, if one did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"group-{group}", daemon=True)
        self._logs = _RecentLogs()
        client_log = logging.getLogger("moldau")
        client_log.addHandler(self._logs)
        if client_log.getEffectiveLevel() > logging.INFO:
            client_log.setLevel(logging.INFO)  # group membership changes are INFO

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            self.crash = traceback.format_exc()  # a bug: diagnose() shows it
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                records = self.consumer.poll(timeout_ms=100, max_records=2_000)
            except MoldauError:
                self.errors += 1
                time.sleep(0.05)
                continue
            if not records:
                continue
            self.last_records_at = time.monotonic()
            offsets: dict[int, int] = {}
            for record in records:
                assert record.value is not None
                self.history.polled.append((record.partition, record.offset, record.value))
                offsets[record.partition] = record.offset + 1
            self.positions.update(offsets)
            try:
                self.consumer.commit({(self.topic, p): o for p, o in offsets.items()})
            except MoldauError:
                self.errors += 1
                continue
            for partition, offset in offsets.items():
                self.history.commits[partition].append(offset)

    def wait_idle(self, quiet_s: float, timeout_s: float) -> None:
        """Return once no record arrived for ``quiet_s`` (the client's buffer is drained)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_records_at >= quiet_s:
                return
            time.sleep(0.05)

    def caught_up(self, ends: dict[int, int]) -> bool:
        return all(self.positions.get(p, 0) >= end for p, end in ends.items() if end > 0)

    def diagnose(self) -> str:
        """The consumer's inner state, for a failure message: what it holds, what its group
        membership believes, how each partition's fetch stream stands, and its last logs."""
        consumer: Any = self.consumer
        parts = [f"positions {dict(consumer._positions)}",
                 f"generations {dict(consumer._generations)}",
                 f"buffered chunks {len(consumer._buffer.chunks)}, "
                 f"batches {len(consumer._batches)}"]
        session = consumer._session
        if session is not None:
            membership = session.membership
            parts.append(
                f"session: assigned {sorted(session.assigned)}, failed {session.failed!r}, "
                f"no_offset {sorted(session.no_offset)}, member {membership.member_id!r} "
                f"generation {membership.generation} live {membership._live} held "
                f"{sorted(membership.held)} pending events {list(membership.events)[:5]} "
                f"task done {membership._task is not None and membership._task.done()}")
        for tp, stream in consumer._fetcher._streams.items():
            task = stream.task
            parts.append(
                f"fetch {tp}: generation {stream.generation} offset {stream.offset} "
                f"unconsumed {stream.unconsumed} returned {stream.returned} task "
                f"{'done' if task is not None and task.done() else 'running'}")
        parts.append("last client logs:\n" + "\n".join(self._logs.lines))
        parts.append("polling thread:\n" + (self.crash or _thread_stack(self._thread)))
        parts.append("consumer loop tasks:\n" + _task_stacks(consumer._thread.loop))
        return "\n  ".join(parts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.consumer.close()
        logging.getLogger("moldau").removeHandler(self._logs)


def _thread_stack(thread: threading.Thread) -> str:
    """Where ``thread`` is right now (a stall names the call it waits in)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(not running)"


def _task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of ``loop`` with the line it waits at (read from another thread: a
    diagnostic snapshot, not exact)."""
    lines = []
    for task in list(asyncio.all_tasks(loop)):
        where = "; ".join(
            f"{f.f_code.co_name}:{f.f_lineno}" for f in task.get_stack(limit=6)
        )
        lines.append(f"    {task.get_name()}: {where}")
    return "\n".join(lines)


class _RecentLogs(logging.Handler):
    """The client's last log lines (INFO and up), kept for a failure message."""

    def __init__(self, keep: int = 40) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.created:.3f} {record.name}: {record.getMessage()[:300]}")


def committed_offsets(address: str, group: str) -> dict[int, int]:
    """The group's committed offsets, straight from GroupService.FetchOffsets."""
    with grpc.insecure_channel(address) as channel:
        stub = groups_pb2_grpc.GroupServiceStub(channel)
        reply = stub.FetchOffsets(groups_pb2.FetchOffsetsRequest(group=group), timeout=10)
    return {o.partition: o.offset for o in reply.offsets}


def read_all(
    address: str, topic: str, group: str, ends: dict[int, int], timeout_s: float = 60
) -> dict[int, list[tuple[int, bytes]]]:
    """Everything below ``ends`` as a fresh consumer group reads it: ``{p: [(offset, value)]}``."""
    stored: dict[int, list[tuple[int, bytes]]] = {p: [] for p in ends}
    deadline = time.monotonic() + timeout_s
    with Consumer(address) as consumer:
        consumer.subscribe([topic], group_id=group, auto_offset_reset="earliest",
                           enable_auto_commit=False)
        while any((rows[-1][0] + 1 if rows else 0) < ends[p] for p, rows in stored.items()):
            if time.monotonic() > deadline:
                progress = {p: len(rows) for p, rows in stored.items()}
                raise TimeoutError(f"read back {progress} of {ends} records")
            for record in consumer.poll(timeout_ms=200, max_records=5_000):
                assert record.value is not None
                stored[record.partition].append((record.offset, record.value))
        consumer.commit({TopicPartition(topic, p): end for p, end in ends.items()})
    return stored


class QueueWorker:
    """A work-queue consumer over the topic: Receive, then Ack what it received.

    Records ``queue_acked`` (offsets whose Ack the broker confirmed) and every delivery of an
    offset already in it (``queue_undone``: an acknowledged ack was forgotten).
    """

    def __init__(self, address: str, topic: str, queue: str, history: History) -> None:
        self.queue = queue
        self.history = history
        self.channel = grpc.insecure_channel(address)
        self.stub = queues_pb2_grpc.QueueServiceStub(self.channel)
        self.stub.DeclareQueue(queues_pb2.DeclareQueueRequest(config=queues_pb2.QueueConfig(
            name=queue, topic=topic, ordering=queues_pb2.QUEUE_ORDERING_UNORDERED,
            lease_ms=3_000, start=queues_pb2.QUEUE_START_POSITION_EARLIEST,
            mode=queues_pb2.QUEUE_MODE_WORK,
        )), timeout=10)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"queue-{queue}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.stub.Receive(queues_pb2.ReceiveRequest(
                    queue=self.queue, max_records=500, wait_ms=100, consumer="fault-test"
                ), timeout=5)
            except grpc.RpcError:
                self.errors += 1
                time.sleep(0.05)
                continue
            where = {}
            for delivery in reply.deliveries:
                key = (delivery.partition, delivery.offset)
                if key in self.history.queue_acked:
                    self.history.queue_undone.append(key)
                where[delivery.lease_id] = key
            if not where:
                continue
            try:
                acked = self.stub.Ack(
                    queues_pb2.AckRequest(queue=self.queue, lease_ids=list(where)), timeout=5
                )
            except grpc.RpcError:
                self.errors += 1
                self.history.queue_ack_unknown.update(where.values())
                continue
            self.history.queue_acked.update(where[lease] for lease in acked.acked)

    def drained(self, ends: dict[int, int]) -> bool:
        """Every offset acked: confirmed, or with an unanswered Ack the broker applied.

        An Ack the broker applied just before a kill gets no reply, and its messages are
        never delivered again, so only the broker can say they are done: its queue must
        have nothing left below ``ends``. If the Ack was lost instead, the lease expires and
        the message comes back, to be acked again.
        """
        if self.missing(ends):
            return False
        acked = self.history.queue_acked
        if all((p, o) in acked for p, o in self.history.queue_ack_unknown):
            return True
        return self._broker_done(ends)

    def missing(self, ends: dict[int, int]) -> list[tuple[int, int]]:
        """Offsets below ``ends`` never acked nor sent in an unanswered Ack, in order."""
        acked = self.history.queue_acked
        unknown = self.history.queue_ack_unknown
        return [(p, o) for p, end in sorted(ends.items()) for o in range(end)
                if (p, o) not in acked and (p, o) not in unknown]

    def _broker_done(self, ends: dict[int, int]) -> bool:
        try:
            reply = self.stub.DescribeQueue(
                queues_pb2.DescribeQueueRequest(name=self.queue), timeout=10
            )
        except grpc.RpcError:
            return False
        starts = {state.partition: state.start_offset for state in reply.partitions}
        return all(starts.get(p, 0) >= end for p, end in ends.items())

    def describe(self) -> str:
        """The broker's view of the queue, for failure messages."""
        try:
            reply = self.stub.DescribeQueue(
                queues_pb2.DescribeQueueRequest(name=self.queue), timeout=10
            )
        except grpc.RpcError as error:
            return f"DescribeQueue failed: {error.code().name} {error.details()}"
        return f"stats: {reply.stats} partitions: {list(reply.partitions)}".replace("\n", " ")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.channel.close()
