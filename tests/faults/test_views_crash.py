"""Views under crashes (T6, and T1's event-store appender): SIGKILL loops under appends with
exact expected versions and a nack storm with dead letters.

One real server on a fixed port. While it is SIGKILLed and restarted after a uniform-random
uptime (0.2-1.5 s in CI), real clients keep working through every restart:

- 8 appenders on ONE stream, each append with an exact expected version: a conflict is
  retried at the server's current version, an unknown outcome with the same event ids
  (:class:`~tests.faults.views_workload.StreamWriter`);
- a producer feeding a 2-partition topic, and two consumers of a work queue over it
  (max_deliveries = 3, 50 ms backoff) that ack, nack with retry or reject each delivery by the
  record's plan, so every record's fate is known in advance.

After each restart the stream must not have lost an acknowledged version. Once the load is
done and the queue drained, the stream must hold versions 0..N-1 with exactly one event per
version and every append once, each at the version it was acknowledged with, and every
queue record must be acked once or in the dead-letter topic with the promised headers
(:func:`~tests.faults.views_workload.check_queue`). Then the views' state (the stream, the
stream list, both queues' counts, the dead letters) is read, the server is SIGKILLed and
restarted, read again, stopped cleanly and restarted, read again: all three must be equal,
and a second queue left with acked, retrying and released records must hand out exactly the
released ones again. Figures go to stderr (``-s``) and, on failure, with the seed.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moldau import (
    NO_STREAM,
    Admin,
    Backoff,
    DeadLetter,
    EventData,
    EventPosition,
    Message,
    Queues,
    RecordedEvent,
)
from moldau import EventStore as EventStoreClient
from moldau.errors import MoldauError
from tests.faults.harness import MODE, SCALE, FaultServer, make_rng
from tests.faults.views_workload import (
    MAX_DELIVERIES,
    Feeder,
    NackStorm,
    QueueFates,
    QueueHistory,
    StreamHistory,
    StreamWriter,
    check_queue,
    check_stream,
)

STORE_TOPIC = "ledger"
STREAM = "account-1"
QUEUE_TOPIC = "jobs"
QUEUE_PARTITIONS = 2
QUEUE = "storm"
PARKED = "parked"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ViewsScale:
    writers: int
    appends_per_writer: int
    queue_records: int
    feed_s: float  # the producer spreads the queue's records over this long
    min_cycles: int
    max_cycles: int  # more cycles only while the appenders or the producer are not done


VIEWS_SCALE = {
    "ci": ViewsScale(8, 100, 600, 16.0, 10, 20),
    "nightly": ViewsScale(8, 1_000, 20_000, 240.0, SCALE.kill_cycles, 600),
}[MODE]


def _retrying(call: Callable[[], _T], timeout_s: float = 60) -> _T:
    """``call()`` until it succeeds, through restarts (retriable client errors only)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except MoldauError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _dead_letters(queues: Queues) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    while True:
        first = letters[-1].dlq_offset + 1 if letters else 0
        page = _retrying(functools.partial(queues.dead_letters, queue=QUEUE,
                                           offsets=(first, first + 4_999), limit=5_000))
        if not page:
            return letters
        letters.extend(page)


def _snapshot(store: EventStoreClient, queues: Queues) -> dict[str, Any]:
    """The views' state as clients see it, minus what a restart may legitimately change
    (leases, which records were read ahead, counters since start)."""

    def queue_state(name: str) -> tuple[object, ...]:
        d = _retrying(lambda: queues.describe(name))
        return (d.stats.depth, d.stats.waiting_retry, d.stats.in_flight,
                d.dead_letter_topic_records,
                tuple((p.partition, p.high_watermark, p.start_offset + p.done_above_start)
                      for p in d.partitions))

    events = _retrying(lambda: store.read_stream(STREAM)).events
    return {
        "stream": tuple((e.version, e.event_id, e.data) for e in events),
        "streams": tuple((s.stream, s.last_version, s.deleted)
                         for s in _retrying(store.list_streams)),
        QUEUE: queue_state(QUEUE),
        PARKED: queue_state(PARKED),
        "dead letters": tuple((x.dlq_offset, x.source_partition, x.source_offset, x.reason,
                               x.attempts, x.last_error) for x in _dead_letters(queues)),
    }


def _differences(before: dict[str, Any], after: dict[str, Any], when: str) -> list[str]:
    found = []
    for name, value in before.items():
        if after[name] != value:
            shown = (f"{len(value)} -> {len(after[name])} entries" if len(str(value)) > 300
                     else f"{value} -> {after[name]}")
            found.append(f"rebuilt-state: {name} differs {when}: {shown}")
    return found


def _park(queues: Queues, total: int) -> set[tuple[int, int]]:
    """Leave the parked queue with acked, retrying (10 min backoff) and released records;
    returns the released ones, which must be receivable again after any restart."""
    received: list[Message] = []
    deadline = time.monotonic() + 60
    while len(received) < total:
        assert time.monotonic() < deadline, f"parked queue gave {len(received)} of {total}"
        received.extend(queues.receive(PARKED, 500, wait_ms=200))
    assert len({(m.partition, m.offset) for m in received}) == total
    for begin in range(0, total, 500):
        chunk = received[begin:begin + 500]
        acks, nacks, releases = ([m for m in chunk if m.offset % 3 == n] for n in range(3))
        if acks:
            assert not queues.ack(acks).failed
        if nacks:
            assert {r.outcome for r in queues.nack(nacks, error="parked")} == {"retry-scheduled"}
        if releases:
            assert not queues.release(releases).failed
    return {(m.partition, m.offset) for m in received if m.offset % 3 == 2}


def _receivable(queues: Queues, expected: int) -> list[tuple[int, int, int]]:
    """(partition, offset, delivery count) of everything the parked queue hands out now."""
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = _retrying(lambda: queues.receive(PARKED, 500, wait_ms=300))
        got.extend((m.partition, m.offset, m.delivery_count) for m in page)
        if not page and len(got) >= expected:
            break
    return got


def _declare_queues(queues: Queues) -> None:
    queues.declare(QUEUE, QUEUE_TOPIC, lease_ms=15_000, max_deliveries=MAX_DELIVERIES,
                   backoff=Backoff(initial_ms=50, multiplier=2.0, max_ms=200))
    queues.declare(PARKED, QUEUE_TOPIC, lease_ms=60_000, max_deliveries=MAX_DELIVERIES,
                   backoff=Backoff(initial_ms=600_000))


def test_views_survive_kill_loop(tmp_path: Path) -> None:
    seed, rng = make_rng("views-crash")
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    run: _Run | None = None
    try:
        run = _Run(tmp_path, seed, rng)
        run.load_under_kills()
        released = run.settle()
        run.check_rebuilt_state(released)
        summary = f"{at}: {run.check()}"
        print(summary, file=sys.stderr)
        assert not run.anomalies, f"{summary}\n" + "\n".join(run.anomalies)
        assert not run.feeder.failures, f"{summary}: producer failures {run.feeder.failures[:3]}"
        assert run.cycles >= VIEWS_SCALE.min_cycles, summary
        assert run.under_load > 0, f"{summary}: no kill came while the load ran"
        assert run.streams.conflicts > 0, f"{summary}: the appenders never raced"
        assert run.fates.acked > 0, summary
        assert run.fates.dead_lettered > 0, summary
    except Exception as exc:  # every failure names its seed, timeouts and client errors too
        if at in str(exc):
            raise
        raise AssertionError(f"{at}: {type(exc).__name__}: {exc}") from exc
    finally:
        if run is not None:
            run.close()


class _Run:
    """One run: the server, the clients and their histories, phase by phase."""

    def __init__(self, tmp_path: Path, seed: int, rng: random.Random) -> None:
        self.started = time.monotonic()
        self.rng = rng
        self.server = server = FaultServer(tmp_path / "data")
        self.streams = StreamHistory()
        self.history = QueueHistory()
        self.anomalies: list[str] = []
        self.cycles = self.under_load = 0
        self.fates = QueueFates()
        self.released: set[tuple[int, int]] = set()
        self._cleanup = contextlib.ExitStack()  # stops what was started, last first
        server.start()
        self._cleanup.callback(server.stop)
        try:
            self._start_load(seed)
        except BaseException:
            self.close()
            raise

    def _start_load(self, seed: int) -> None:
        scale, address = VIEWS_SCALE, self.server.address
        with Admin(address) as admin:
            admin.create_topic(QUEUE_TOPIC, QUEUE_PARTITIONS)
        self.store = EventStoreClient(address, topic=STORE_TOPIC, timeout_ms=10_000)
        self._cleanup.callback(_quietly, self.store.close)
        self.queues = Queues(address, consumer="checker", timeout_ms=10_000)
        self._cleanup.callback(_quietly, self.queues.close)
        self.store.create_store_topic(STORE_TOPIC)
        self.store.append_to_stream(STREAM, NO_STREAM, EventData("Opened", b"genesis"))
        _declare_queues(self.queues)
        self.writers: list[StreamWriter] = []
        for n in range(scale.writers):
            self.writers.append(StreamWriter(address, STORE_TOPIC, STREAM, n,
                                             scale.appends_per_writer, self.streams,
                                             random.Random(f"{seed}:writer:{n}")))
            self._cleanup.callback(_quietly, self.writers[-1].stop)
        self.feeder = Feeder(address, QUEUE_TOPIC, QUEUE_PARTITIONS, scale.queue_records,
                             scale.feed_s, self.rng)
        self._cleanup.callback(_quietly, self.feeder.producer.close, timeout=5)
        self.storms: list[NackStorm] = []
        for n in range(2):
            self.storms.append(NackStorm(address, QUEUE, f"storm-{n}", self.history))
            self._cleanup.callback(_quietly, self.storms[-1].stop)
        for writer in self.writers:
            writer.start()
        self.feeder.start()
        for storm in self.storms:
            storm.start()

    def busy(self) -> bool:
        return (not all(w.finished() for w in self.writers)
                or len(self.feeder.values) < VIEWS_SCALE.queue_records)

    def load_under_kills(self) -> None:
        """SIGKILL and restart after a random uptime; the stream must keep every ack."""
        scale = VIEWS_SCALE
        while self.cycles < scale.min_cycles or (self.busy() and self.cycles < scale.max_cycles):
            time.sleep(self.rng.uniform(*SCALE.uptime_s))
            self.under_load += self.busy()
            self.server.kill()
            self.server.start()
            self.cycles += 1
            floor = self.streams.floor()
            version = _retrying(lambda: self.store.stream_version(STREAM))
            if version < floor:
                self.anomalies.append(f"version-regression: stream at {version} after restart "
                                      f"{self.cycles}, version {floor} was acknowledged before")

    def settle(self) -> set[tuple[int, int]]:
        """Finish the load, drain the queue, park the second queue; the released records."""
        _wait_for("the appenders", lambda: all(w.finished() for w in self.writers), 120)
        self.feeder.finish()
        _wait_for("the queue to drain",
                  lambda: _retrying(lambda: self.queues.describe(QUEUE)).stats.depth == 0, 120)
        for storm in self.storms:
            storm.stop()
        for writer in self.writers:
            writer.stop()
        self.released = _park(self.queues, VIEWS_SCALE.queue_records)
        return self.released

    def check_rebuilt_state(self, released: set[tuple[int, int]]) -> None:
        """The views read the same after a SIGKILL and after a clean restart."""
        before = _snapshot(self.store, self.queues)
        self.server.kill()
        self.server.start()
        self.anomalies += _differences(before, _snapshot(self.store, self.queues),
                                       "after SIGKILL")
        self.server.stop()
        self.server.start()
        self.anomalies += _differences(before, _snapshot(self.store, self.queues),
                                       "after a clean restart")
        again = _receivable(self.queues, len(released))
        if sorted(again) != sorted((p, o, 1) for p, o in released):
            self.anomalies.append(
                f"rebuilt-state: the parked queue handed out {len(again)} records after the "
                f"restarts, {len(released)} released ones expected; first {sorted(again)[:5]}")

    def check(self) -> str:
        """Check the stream and the queue's records; the summary line of the figures."""
        scale, streams, history = VIEWS_SCALE, self.streams, self.history
        events = list(_retrying(lambda: self.store.read_stream(STREAM)).events)
        self.anomalies += check_stream(streams, events, scale.writers, scale.appends_per_writer)
        self.fates = fates = check_queue(history, self.feeder.values,
                                         _dead_letters(self.queues), QUEUE_TOPIC, QUEUE)
        self.anomalies += fates.anomalies
        restarts = sorted(self.server.restart_seconds)
        return (
            f"cycles={self.cycles} (under load {self.under_load}) "
            f"restart_s_median={restarts[len(restarts) // 2]:.2f} "
            f"appends_acked={len(streams.acked)} versions={len(events)} "
            f"append_calls={streams.calls} conflicts={streams.conflicts} "
            f"refused={streams.refused} unknown_outcomes={streams.unknown_outcomes} "
            f"retries_deduplicated={streams.deduplicated} "
            f"queue_records={len(self.feeder.values)} acked={fates.acked} "
            f"dead_lettered={fates.dead_lettered} pending={fates.pending} "
            f"dlq_duplicates={fates.dlq_duplicates} redeliveries={fates.redeliveries} "
            f"acks_unanswered={len(history.ack_unknown)} "
            f"dead_nacks_unanswered={sum(history.dead_unknown.values())} "
            f"parked_released={len(self.released)} "
            f"anomalies={len(self.anomalies)} runtime_s={time.monotonic() - self.started:.0f}"
        )

    def close(self) -> None:
        self._cleanup.close()


def _quietly(stop: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Cleanup after a failure that was already raised: a second error would hide it."""
    with contextlib.suppress(Exception):
        stop(*args, **kwargs)


def _event(version: int, event_id: uuid.UUID) -> RecordedEvent:
    return RecordedEvent(STREAM, version, event_id, "Deposited", 1, b"", b"", 0,
                         EventPosition(0, version))


def _letter(partition: int, offset: int, value: bytes, reason: str, attempts: int,
            error: str) -> DeadLetter:
    return DeadLetter(f"{QUEUE_TOPIC}.dlq", 0, 0, QUEUE_TOPIC, partition, offset, QUEUE,
                      reason, attempts, error, 1, 2, None, value, (), False)


def test_view_checks_catch_each_anomaly() -> None:
    """The checks above can fail: each anomaly they claim to find, in a synthetic history."""
    ids = [uuid.UUID(int=n + 1, version=4) for n in range(4)]
    streams = StreamHistory()
    streams.acked = {ids[1]: (0, 1, False), ids[2]: (1, 1, False), ids[3]: (2, 3, False)}
    stored = [_event(0, ids[0]), _event(1, ids[1]), _event(2, ids[2]), _event(4, ids[2])]
    kinds = {line.split(":")[0] for line in check_stream(streams, stored, 3, 2)}
    assert kinds == {"gap", "count", "duplicate", "lost", "inconsistent-version",
                     "double-success", "unacknowledged"}, kinds

    values = {(0, 0): b"m0:ack1", (0, 1): b"m1:dead", (0, 2): b"m2:rej2", (0, 3): b"m3:dead",
              (0, 4): b"m4:ack2", (0, 5): b"m5:rej1"}
    history = QueueHistory()
    history.events[(0, 0)] += [("delivery", 1, (), b"m0:ack1"), ("acked",),
                               ("delivery", 1, (), b"m0:ack1")]
    history.events[(0, 1)] += [("delivery", 2, (), b"m1:dead"), ("retried", 2),
                               ("delivery", 2, ((1, "nack", "x"),), b"m1:dead"),
                               ("delivery", 1, (), b"other"), ("delivery", 4, (), b"m1:dead")]
    history.dead_counts[(0, 2)] = {2}
    letters = [_letter(0, 1, b"m1:dead", "max-deliveries", 3, "retry c3"),
               _letter(0, 1, b"m1:dead", "max-deliveries", 3, "retry c3"),
               _letter(0, 2, b"m2:rej2", "rejected", 1, "reject c1"),
               _letter(0, 3, b"m3:dead", "max-deliveries", 2, "retry c2"),
               _letter(0, 4, b"m4:ack2", "rejected", 2, "reject c2"),
               _letter(1, 9, b"m9:dead", "max-deliveries", 3, "retry c3")]
    fates = check_queue(history, values, letters, QUEUE_TOPIC, QUEUE)
    kinds = {line.split(":")[0] for line in fates.anomalies}
    assert kinds == {"acked-undone", "retry-undone", "count-regression", "inconsistent-value",
                     "over-delivered", "attempts", "dlq-duplicate", "letter-attempts",
                     "letter-headers", "lost", "pending", "wrong-fate", "unexpected-letter"}, kinds
    assert (fates.acked, fates.dead_lettered, fates.dlq_duplicates) == (1, 3, 1)
