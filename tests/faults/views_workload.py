"""Workloads and checks for the views-under-crashes test (T6): event-store appenders and a
nack storm on a work queue, each recording what its client was told.

- :class:`StreamWriter`: appends events one at a time to ONE stream with an exact expected
  version. On ``WrongExpectedVersionError`` it retries at the server's current version; on an
  unknown outcome (UNAVAILABLE, a refused connection, a deadline) it resends the SAME event ids
  at the same expected version, so the server's idempotency by event id is exercised.
  :func:`check_stream` then holds the stream read back against :class:`StreamHistory`.
- :class:`Feeder` produces the queue's records at a steady pace; each value names its plan
  (``ack1``-``ack3``: ack at that delivery; ``dead``: nack every delivery until the queue gives
  up; ``rej1``-``rej3``: reject at that delivery), so every record's final fate is known.
- :class:`NackStorm` receives and settles by plan; :func:`check_queue` walks every record's
  deliveries and confirmed outcomes (:class:`QueueHistory`) and the dead-letter topic.

A confirmed outcome is one whose reply the client received. An outcome is *unknown* when the
call failed without an answer (a kill between applying and replying): the engine decides.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from moldau import DeadLetter, EventData, Message, Producer, Queues, RecordedEvent
from moldau import EventStore as EventStoreClient
from moldau.errors import ConnectionFailedError, MoldauError, WrongExpectedVersionError

__all__ = [
    "MAX_DELIVERIES",
    "PLANS",
    "Feeder",
    "NackStorm",
    "QueueFates",
    "QueueHistory",
    "StreamHistory",
    "StreamWriter",
    "check_queue",
    "check_stream",
]

MAX_DELIVERIES = 3
#: plan -> weight; the number is the delivery at which the plan acks or rejects.
PLANS = {"ack1": 3, "ack2": 2, "ack3": 2, "dead": 5, "rej1": 1, "rej2": 1, "rej3": 1}
EXPIRED_ERROR = "lease expired"
_RETRY_PAUSE_S = 0.03


def _unknown(exc: MoldauError) -> bool:
    """The call may or may not have been applied: the server went away or did not answer in
    time. A refused connection is not one: the request was never sent."""
    return exc.retriable and not isinstance(exc, ConnectionFailedError)


# ------------------------------------------------------------------------- event store


@dataclass(slots=True)
class StreamHistory:
    """What the appenders were told. Mutated under ``lock`` (several writer threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: event id -> (writer, version acknowledged, duplicate flag of the acknowledgement)
    acked: dict[uuid.UUID, tuple[int, int, bool]] = field(default_factory=dict)
    #: event ids whose append had at least one unknown outcome before it was acknowledged
    retried_ids: set[uuid.UUID] = field(default_factory=set)
    max_acked_version: int = 0
    calls: int = 0
    conflicts: int = 0
    refused: int = 0
    unknown_outcomes: int = 0
    deduplicated: int = 0
    anomalies: list[str] = field(default_factory=list)

    def floor(self) -> int:
        with self.lock:
            return self.max_acked_version


class StreamWriter:
    """One appender thread: ``count`` single-event appends to ``stream`` (see module docs)."""

    def __init__(self, address: str, topic: str, stream: str, writer: int, count: int,
                 history: StreamHistory, rng: random.Random) -> None:
        self.stream = stream
        self.writer = writer
        self.history = history
        self.client = EventStoreClient(address, topic=topic, timeout_ms=5_000)
        self.events = [
            EventData("Deposited", f"w{writer}:{n}".encode(),
                      event_id=uuid.UUID(int=rng.getrandbits(128), version=4))
            for n in range(count)
        ]
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"append-{writer}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finished(self) -> bool:
        return self.done == len(self.events)

    def _current_version(self) -> int:
        while not self._stop.is_set():
            try:
                return self.client.stream_version(self.stream)
            except MoldauError as exc:
                self._failed(exc, "reading the stream version")
        return -1

    def _run(self) -> None:
        expected = self._current_version()
        for event in self.events:
            result = self._append(event, expected)
            if result is None:
                return
            expected = result
            self.done += 1

    def _append(self, event: EventData, expected: int) -> int | None:
        """Append until acknowledged; the version to expect next, or None when stopped."""
        history = self.history
        while not self._stop.is_set():
            floor = history.floor()
            try:
                result = self.client.append_to_stream(self.stream, expected, event)
            except WrongExpectedVersionError as exc:
                with history.lock:
                    history.calls += 1
                    history.conflicts += 1
                    if exc.current_version is None or exc.current_version < floor:
                        history.anomalies.append(
                            f"stale-version: writer {self.writer} was told the stream is at "
                            f"{exc.current_version} after version {floor} was acknowledged")
                expected = exc.current_version if exc.current_version is not None else expected
                continue
            except MoldauError as exc:
                with history.lock:
                    history.calls += 1
                    if isinstance(exc, ConnectionFailedError):
                        history.refused += 1
                    elif _unknown(exc):
                        history.unknown_outcomes += 1
                        history.retried_ids.add(event.event_id)
                self._failed(exc, f"appending {event.event_id}")
                continue  # the same event id, the same expected version
            self._record(event, result.first_version, result.duplicate, floor)
            return result.last_version
        return None

    def _record(self, event: EventData, version: int, duplicate: bool, floor: int) -> None:
        history = self.history
        with history.lock:
            history.calls += 1
            history.acked[event.event_id] = (self.writer, version, duplicate)
            history.max_acked_version = max(history.max_acked_version, version)
            if duplicate:
                history.deduplicated += 1
                if event.event_id not in history.retried_ids:
                    history.anomalies.append(
                        f"phantom-duplicate: {event.event_id} acknowledged as a retry at "
                        f"version {version}, but it was never sent before")
            elif version <= floor:
                history.anomalies.append(
                    f"lost-update: {event.event_id} appended at version {version} although "
                    f"version {floor} was acknowledged before the call")

    def _failed(self, exc: MoldauError, doing: str) -> None:
        if not exc.retriable:
            with self.history.lock:
                self.history.anomalies.append(
                    f"error: writer {self.writer} {doing}: {type(exc).__name__}: {exc}")
        time.sleep(_RETRY_PAUSE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def check_stream(history: StreamHistory, events: list[RecordedEvent], writers: int,
                 per_writer: int, limit: int = 10) -> list[str]:
    """Anomalies of the stream as read back: gaps, duplicates, lost or moved acknowledgements."""
    found: list[str] = list(history.anomalies)
    expected_count = 1 + writers * per_writer  # the genesis event, then every append once
    versions = [e.version for e in events]
    if versions != list(range(len(events))):
        gaps = sorted(set(range(max(versions, default=-1) + 1)) - set(versions))
        found.append(f"gap: versions are not 0..{len(events) - 1}: missing {gaps[:limit]}")
    if len(events) != expected_count:
        found.append(f"count: {len(events)} events stored, {expected_count} appended")
    ids = Counter(e.event_id for e in events)
    for event_id, copies in list(ids.items())[:limit]:
        if copies > 1:
            found.append(f"duplicate: event {event_id} stored {copies} times")
    at = {e.event_id: e for e in events}
    told: dict[int, uuid.UUID] = {}
    for event_id, (writer, version, _) in history.acked.items():
        stored = at.get(event_id)
        if stored is None:
            found.append(f"lost: {event_id} of writer {writer} acknowledged at version "
                         f"{version} is not stored")
        elif stored.version != version:
            found.append(f"inconsistent-version: {event_id} acknowledged at {version}, "
                         f"stored at {stored.version}")
        other = told.setdefault(version, event_id)
        if other != event_id:
            found.append(f"double-success: version {version} acknowledged to {other} and "
                         f"{event_id}")
    if len(history.acked) != writers * per_writer:
        found.append(f"unacknowledged: {writers * per_writer - len(history.acked)} appends "
                     "never acknowledged")
    return found[: limit * 4]


# ------------------------------------------------------------------------- work queue


def plan_of(value: bytes) -> str:
    return value.rsplit(b":", 1)[1].decode()


def action_for(plan: str, delivery_count: int) -> str:
    """``ack``, ``retry`` or ``reject`` for this delivery of a record with ``plan``."""
    kind, at = plan[:3], int(plan[3:]) if plan[3:].isdigit() else MAX_DELIVERIES + 1
    if kind == "ack" and delivery_count >= at:
        return "ack"
    if kind == "rej" and delivery_count >= at:
        return "reject"
    return "retry"


class Feeder:
    """Produces ``count`` records at a steady pace over ``seconds``, round-robin over the
    partitions, with an idempotent producer; ``values`` maps (partition, offset) -> value."""

    def __init__(self, address: str, topic: str, partitions: int, count: int, seconds: float,
                 rng: random.Random) -> None:
        self.topic = topic
        self.partitions = partitions
        self.count = count
        self.interval_s = seconds / count
        plans, weights = list(PLANS), list(PLANS.values())
        self.plans = rng.choices(plans, weights, k=count)
        self.producer = Producer(address, idempotent=True, linger_ms=2,
                                 delivery_timeout_ms=300_000, retry_backoff_ms=50)
        self.values: dict[tuple[int, int], bytes] = {}
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        for n, plan in enumerate(self.plans):
            delay = started + n * self.interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            value = f"m{n}:{plan}".encode()
            try:
                future = self.producer.send(self.topic, value, partition=n % self.partitions)
            except MoldauError as exc:
                self.failures.append(exc)
                continue
            future.add_done_callback(self._settled(value))

    def _settled(self, value: bytes) -> Callable[..., None]:
        def done(future: object) -> None:
            error = future.exception()  # type: ignore[attr-defined]
            if error is not None:
                self.failures.append(error)
                return
            metadata = future.result()  # type: ignore[attr-defined]
            self.values[(metadata.partition, metadata.offset)] = value

        return done

    def finish(self) -> None:
        """Wait for every record to be sent and acknowledged, then close."""
        self._thread.join(300)
        self.producer.flush(timeout=120)
        self.producer.close(timeout=30)


Key = tuple[int, int]


@dataclass(slots=True)
class QueueHistory:
    """Per record (partition, offset), in the order the clients learnt them: deliveries
    ``("delivery", count, attempt numbers and errors, value)`` and confirmed outcomes
    ``("acked",)``, ``("retried", count)``, ``("dead", count)``. Mutated under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: dict[Key, list[tuple[object, ...]]] = field(default_factory=lambda: defaultdict(list))
    #: records sent in an Ack whose reply never came
    ack_unknown: set[Key] = field(default_factory=set)
    #: record -> nacks that would dead-letter it (a reject, or a retry of the last
    #: delivery) whose reply never came: each may have left a copy in the DLQ
    dead_unknown: Counter[Key] = field(default_factory=Counter)
    #: record -> delivery counts at which a dead-lettering nack was sent
    dead_counts: dict[Key, set[int]] = field(default_factory=lambda: defaultdict(set))
    calls: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)

    def add(self, key: Key, event: tuple[object, ...]) -> None:
        with self.lock:
            self.events[key].append(event)


class NackStorm:
    """One queue consumer thread that settles every delivery by its record's plan."""

    def __init__(self, address: str, queue: str, name: str, history: QueueHistory) -> None:
        self.queue = queue
        self.name = name
        self.history = history
        self.client = Queues(address, consumer=name, timeout_ms=5_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"storm-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.client.receive(self.queue, 64, wait_ms=100)
            except MoldauError as exc:
                self._failed(exc, "receive")
                continue
            groups: dict[tuple[str, int], list[Message]] = defaultdict(list)
            for message in messages:
                assert message.value is not None
                attempts = tuple((a.number, a.outcome, a.error) for a in message.attempts)
                self.history.add((message.partition, message.offset),
                                 ("delivery", message.delivery_count, attempts, message.value))
                action = action_for(plan_of(message.value), message.delivery_count)
                groups[(action, 0 if action == "ack" else message.delivery_count)].append(message)
            for (action, count), group in groups.items():
                if action == "ack":
                    self._ack(group)
                else:
                    self._nack(group, action, count)

    def _ack(self, messages: list[Message]) -> None:
        keys = {m.lease_id: (m.partition, m.offset) for m in messages}
        try:
            result = self.client.ack(messages)
        except MoldauError as exc:
            if _unknown(exc):
                with self.history.lock:
                    self.history.ack_unknown.update(keys.values())
            self._failed(exc, "ack")
            return
        self.history.calls["ack"] += 1
        for lease in result.acked:
            self.history.add(keys[lease], ("acked",))

    def _nack(self, messages: list[Message], action: str, count: int) -> None:
        keys = {m.lease_id: (m.partition, m.offset) for m in messages}
        dooms = action == "reject" or count >= MAX_DELIVERIES
        if dooms:
            with self.history.lock:
                for key in keys.values():
                    self.history.dead_counts[key].add(count)
        try:
            results = self.client.nack(messages, error=f"{action} c{count}",
                                       reject=action == "reject")
        except MoldauError as exc:
            if _unknown(exc) and dooms:
                with self.history.lock:
                    self.history.dead_unknown.update(keys.values())
            self._failed(exc, "nack")
            return
        self.history.calls["nack"] += 1
        for result in results:
            key = keys[result.lease_id]
            if result.outcome == "retry-scheduled":
                self.history.add(key, ("retried", count))
            elif result.outcome == "dead-lettered":
                self.history.add(key, ("dead", count))
            elif result.outcome == "dead-letter-failed":
                with self.history.lock:
                    self.history.anomalies.append(f"dead-letter-failed: {key}: {result.detail}")

    def _failed(self, exc: MoldauError, call: str) -> None:
        with self.history.lock:
            self.history.calls[f"{call}-failed"] += 1
            if not exc.retriable:
                self.history.anomalies.append(f"error: {call}: {type(exc).__name__}: {exc}")
        time.sleep(_RETRY_PAUSE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


@dataclass(slots=True)
class QueueFates:
    """What became of the records: counts for the summary, and the anomalies."""

    acked: int = 0
    dead_lettered: int = 0
    pending: int = 0
    dlq_duplicates: int = 0
    redeliveries: int = 0
    anomalies: list[str] = field(default_factory=list)


def check_queue(history: QueueHistory, values: dict[Key, bytes], letters: list[DeadLetter],
                topic: str, queue: str, limit: int = 10) -> QueueFates:
    """Hold every record's history and the dead-letter topic against the guarantees."""
    fates = QueueFates(anomalies=list(history.anomalies))
    report = fates.anomalies.append
    copies: dict[Key, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        key = (letter.source_partition, letter.source_offset)
        copies[key].append(letter)
        if letter.source_topic != topic or letter.queue != queue or key not in values:
            report(f"unexpected-letter: {letter}")
    for key, value in sorted(values.items()):
        events = history.events.get(key, [])
        _check_record(key, value, events, report)
        plan = plan_of(value)
        stored = copies.get(key, [])
        acked = any(e[0] == "acked" for e in events) or key in history.ack_unknown
        fates.redeliveries += max(0, sum(e[0] == "delivery" for e in events) - 1)
        if plan.startswith("ack"):
            fates.acked += acked
            fates.pending += not acked
            if not acked:
                report(f"pending: {key} ({plan}) was never acked; history {events}")
            if any(letter.last_error != EXPIRED_ERROR for letter in stored):
                report(f"wrong-fate: {key} ({plan}) is in the dead-letter topic: {stored}")
            continue
        fates.dead_lettered += bool(stored)
        if not stored:
            fates.pending += 1
            report(f"lost: {key} ({plan}) is done but not in the dead-letter topic; "
                   f"history {events}")
        fates.dlq_duplicates += max(0, len(stored) - 1)
        if len(stored) > 1 + history.dead_unknown[key]:
            report(f"dlq-duplicate: {key} ({plan}) copied {len(stored)} times, with "
                   f"{history.dead_unknown[key]} unanswered dead-lettering nacks")
        for letter in stored:
            _check_letter(key, value, plan, letter, history.dead_counts.get(key, set()), report)
    del fates.anomalies[limit * 4:]
    return fates


def _check_record(key: Key, value: bytes, events: list[tuple[object, ...]],
                  report: Callable[[str], None]) -> None:
    """Deliveries of one record against its confirmed outcomes, in the order learnt."""
    last_count = 0
    retried: set[int] = set()
    done = ""
    for event in events:
        if event[0] == "acked":
            done = "acked"
        elif event[0] == "dead":
            done = "dead-lettered"
        elif event[0] == "retried":
            assert isinstance(event[1], int)
            retried.add(event[1])
        else:
            _, count, attempts, delivered = event
            assert isinstance(count, int)
            assert isinstance(attempts, tuple)
            if done:
                report(f"{done}-undone: {key} delivered again (count {count}) after it was "
                       f"confirmed {done}")
            if count < last_count:
                report(f"count-regression: {key} delivered with count {count} after "
                       f"{last_count}")
            if retried and count <= max(retried):
                report(f"retry-undone: {key} delivered with count {count} after the nack of "
                       f"delivery {max(retried)} was confirmed")
            if count > MAX_DELIVERIES:
                report(f"over-delivered: {key} delivered {count} times, max {MAX_DELIVERIES}")
            numbers = [a[0] for a in attempts]
            missing = retried - set(numbers)
            if missing or numbers != sorted(set(numbers)) or any(n >= count for n in numbers):
                report(f"attempts: {key} delivery {count} carries attempts {attempts}; "
                       f"confirmed failures {sorted(retried)}")
            if delivered != value:
                report(f"inconsistent-value: {key} delivered {delivered!r}, stored {value!r}")
            last_count = count


def _check_letter(key: Key, value: bytes, plan: str, letter: DeadLetter, sent: set[int],
                  report: Callable[[str], None]) -> None:
    """One dead letter: the copy and the headers the engine promises."""
    expired = letter.last_error == EXPIRED_ERROR  # a lease ran out on the last delivery
    if plan == "dead":
        wanted = ("max-deliveries", MAX_DELIVERIES, f"retry c{MAX_DELIVERIES}")
    else:
        wanted = ("rejected", letter.attempts, f"reject c{letter.attempts}")
        if letter.attempts not in sent and not expired:
            report(f"letter-attempts: {key} ({plan}) dead-lettered with attempts "
                   f"{letter.attempts}, rejected at deliveries {sorted(sent)}")
    got = (letter.reason, letter.attempts, letter.last_error)
    if got != wanted and not (expired and letter.reason == "max-deliveries"):
        report(f"letter-headers: {key} ({plan}) reason/attempts/error {got}, "
               f"expected {wanted}")
    if letter.value != value or letter.key is not None:
        report(f"letter-copy: {key} copied as {letter.key!r}/{letter.value!r}, "
               f"stored {value!r}")
    if not 0 < letter.first_failure_ms <= letter.last_failure_ms:
        report(f"letter-times: {key} first failure {letter.first_failure_ms}, last "
               f"{letter.last_failure_ms}")
