"""The router: tails every exchange topic and appends each record to its matching destinations.

A routing *step* handles one exchange partition: read whole batches from the checkpoint
``offset`` (up to a record budget), match every record, group the routed records per
destination partition (in exchange order), append one batch per destination partition (more
only beyond ``max.message.bytes``), wait until those appends are durable, then write the
checkpoint (``checkpoints``) with the new offset. Records keep their key, value, headers and
timestamp; with ``provenance`` they also get ``x-exchange``, ``x-exchange-partition`` and
``x-exchange-offset`` headers (replacing any such headers they had).

Destination partition: a keyed record goes where Kafka's partitioner puts its key in the
destination (so a key's records stay in order in one partition); an unkeyed record goes to
``(exchange partition + offset // 1024) % partitions`` (blocks of records, spread, and a pure
function of the record, which the argument below needs).

Exactly once. Each (exchange partition, destination topic) pair is an idempotent producer:
its producer id is a hash of (exchange incarnation, exchange, partition, destination), its
epoch is 0, and per destination partition it numbers the records it appends 0, 1, 2, ... The
checkpoint stores, atomically with ``offset``, the next number per destination partition.

1. Nothing is lost: the checkpoint passes a record only after every append of that record is
   durable (fsync-durable even for ``durability=async`` destinations, which are flushed), so
   after any crash every record at or above the checkpoint is routed again, and every record
   below it is durably in its destinations. An ``async`` exchange topic is flushed before the
   checkpoint too, so a power loss cannot leave the checkpoint past the exchange's log end.
2. Replays route the same records to the same places in the same order: a step starts at the
   checkpoint, handles records in offset order, and a record's destination partitions are a
   function of the record and the bindings. Bindings do not change while a step is in flight
   (a change takes the registry's lock, which every step holds), and a step that fails
   part-way first makes its appends durable and checkpoints them as ``done`` (skipped on
   retry); if even that fails the exchange is *in doubt* and binding changes are refused
   until a step completes. So the replay of an interrupted step sees the interrupted step's
   bindings, and for each destination partition the records the interrupted step appended
   are a prefix of those the replay appends (or the replay's are a prefix of them, when it
   reads fewer records).
3. The destination recognises that prefix: its producer state (rebuilt from the log on open,
   kept through compaction) knows the last sequence number this producer stored. The replay
   appends from the checkpointed number ``s``; when the destination already holds up to
   ``e - 1 >= s`` it answers with a duplicate (same range) or an out-of-order error naming
   ``e``, and the router drops the first ``e - s`` records (they are the stored prefix) and
   appends the rest from ``e``. The checkpoint then records the numbers as replayed, so the
   next step continues the same count.

Together: every record is appended to each matching destination once. What this does not
cover: a destination deleted (its records go with it) or one whose data is lost below what the
router saw durable (then the router logs it and continues from the destination's numbers);
records the exchange topic's retention deletes before they are routed (counted as
``expired``); and routing changes by an upgrade of this code between a crash and its replay.

Unroutable records (matching no binding) are counted, and appended to the exchange's
alternate topic when it has one. A missing destination (or alternate) pauses the exchange
before anything is appended: the error shows in :meth:`Router.describe` and routing retries
until the topic exists or the binding is removed; nothing is dropped.

Concurrency: any thread may call any method. :meth:`run_once` calls are serialised; each step
holds the registry's lock; :meth:`start` runs ``run_once`` on a background thread, woken when
an exchange partition's high watermark moves. Use one router per broker.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from engine.broker import Broker
from engine.clock import Clock, SystemClock
from engine.errors import (
    EngineError,
    OutOfOrderSequenceError,
    UnknownExchangeError,
    UnknownTopicError,
)
from engine.log.partition_log import PartitionLog
from engine.records.errors import BatchTooLargeError, RecordError
from engine.records.record import Header
from engine.views.routing.checkpoints import CheckpointStore, DestinationPartition, Position
from engine.views.routing.exchanges import ExchangeRegistry
from engine.views.routing.matcher import Matcher
from engine.views.routing.planner import Plan, plan_step
from engine.views.routing.reframe import RoutedRecord, encode_headers, encode_routed
from engine.views.routing.types import (
    Exchange,
    ExchangeStatus,
    PartitionStatus,
    RunResult,
)

__all__ = ["DEFAULT_MAX_RECORDS", "PROVENANCE_HEADERS", "Router"]

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 20_000
PROVENANCE_HEADERS = ("x-exchange", "x-exchange-partition", "x-exchange-offset")
_SEQUENCES = 2**31  # producer sequence numbers wrap here (Kafka's int32)
_EPOCH = 0


@dataclass(slots=True)
class _State:
    """The router's view of one exchange partition: its checkpoint as last written."""

    position: Position
    sequences: dict[str, list[int]] = field(default_factory=dict)
    in_doubt: str | None = None


@dataclass(slots=True)
class _Progress:
    """Appends of one step so far: per destination partition, records and next sequence."""

    sequences: dict[str, list[int]] = field(default_factory=dict)
    appended: dict[DestinationPartition, int] = field(default_factory=dict)  # records[:n]
    logs: dict[int, PartitionLog] = field(default_factory=dict)  # id -> destination log


class Router:
    """Routes every declared exchange; create with :meth:`open`, stop with :meth:`close`."""

    def __init__(
        self,
        broker: Broker,
        registry: ExchangeRegistry,
        store: CheckpointStore,
        clock: Clock,
        retry_interval_s: float,
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._store = store
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._states: dict[tuple[str, int], _State] = {}
        self._forgotten: dict[tuple[str, int], list[str]] = {}  # checkpoints to delete
        self._errors: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._producer_ids: dict[tuple[str, str, int, str], int] = {}
        self._run_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listening: dict[tuple[str, int], PartitionLog] = {}
        self._turn = 0

    @classmethod
    def open(
        cls,
        broker: Broker,
        registry: ExchangeRegistry,
        *,
        clock: Clock | None = None,
        retry_interval_s: float = 0.2,
    ) -> Router:
        """Load the checkpoints; routing starts with :meth:`run_once` or :meth:`start`.

        Args:
            broker: the broker holding exchanges, destinations and the internal topics.
            registry: the exchanges to route (see ``exchanges``).
            clock: for checkpoint timestamps and the retry interval of paused exchanges.
            retry_interval_s: a paused exchange is retried at most this often.
        """
        clock = clock or SystemClock()
        store, loaded = CheckpointStore.open(broker, clock)
        router = cls(broker, registry, store, clock, retry_interval_s)
        declared = {e.name: e for e in registry.exchanges()}
        for key, entry in loaded.items():
            exchange = declared.get(key[0])
            position = entry.position
            if exchange is None or position is None or position.incarnation != exchange.incarnation:
                router._forgotten[key] = sorted(entry.sequences)
                continue
            sequences = {
                d: values for d, (incarnation, values) in entry.sequences.items()
                if incarnation == exchange.incarnation
            }
            router._states[key] = _State(position, sequences)
        return router

    # ------------------------------------------------------------------ driving

    def run_once(self, max_records: int = DEFAULT_MAX_RECORDS) -> RunResult:
        """Route up to about ``max_records`` exchange records (whole batches); never blocks
        on an empty exchange.

        Exchanges take turns at the start, so a busy one cannot starve the others. Errors
        pause the exchange concerned (see :meth:`describe`) and are not raised.
        """
        with self._run_lock:
            self._forget_deleted()
            names = [e.name for e in self._registry.exchanges()]
            if names:
                self._turn = (self._turn + 1) % len(names)
                names = names[self._turn :] + names[: self._turn]
            total = RunResult()
            for name in names:
                budget = max_records - total.records
                if budget <= 0:
                    break
                total = _add(total, self._route_exchange(name, budget))
            return total

    def start(self, *, max_records: int = DEFAULT_MAX_RECORDS, idle_wait_s: float = 0.1) -> None:
        """Route on a background thread until :meth:`close`; woken by new exchange records."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, args=(max_records, idle_wait_s), name="moldau-router", daemon=True
        )
        self._thread.start()

    def _loop(self, max_records: int, idle_wait_s: float) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                result = self.run_once(max_records)
            except Exception:  # the loop must outlive one bad pass; run_once reports per exchange
                log.exception("routing pass failed")
                result = RunResult()
            if result.records == 0:
                self._wake.wait(idle_wait_s)

    def close(self) -> None:
        """Stop the background thread (after its current pass) and drop the listeners."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._run_lock:
            for partition_log in self._listening.values():
                partition_log.remove_listener(self._wake.set)
            self._listening.clear()

    # ------------------------------------------------------------------ status

    def describe(self, name: str) -> ExchangeStatus:
        """The exchange, its bindings and the routing progress of each partition.

        Raises:
            UnknownExchangeError: not declared.
        """
        with self._registry.lock:
            exchange = self._registry.get(name)
            bindings = tuple(self._registry.bindings(name))
            try:
                logs = self._broker.partitions(name)
            except UnknownTopicError:
                logs = []
            partitions = []
            for partition, partition_log in enumerate(logs):
                position = self._position(exchange, partition)
                partitions.append(PartitionStatus(
                    partition, position.offset, partition_log.high_watermark,
                    position.routed, position.unroutable, position.expired,
                ))
            return ExchangeStatus(exchange, bindings, tuple(partitions), self._errors.get(name))

    def describe_all(self) -> list[ExchangeStatus]:
        """:meth:`describe` of every exchange, sorted by name."""
        statuses = []
        for exchange in self._registry.exchanges():
            try:
                statuses.append(self.describe(exchange.name))
            except UnknownExchangeError:  # deleted meanwhile
                continue
        return statuses

    # ------------------------------------------------------------------ one exchange

    def _route_exchange(self, name: str, budget: int) -> RunResult:
        """Steps over the partitions of ``name`` with backlog, under the registry's lock."""
        if name in self._errors and self._clock.monotonic() < self._retry_at.get(name, 0.0):
            return RunResult(paused=(name,))
        with self._registry.lock:
            matcher = self._registry.matcher(name)
            if matcher is None:
                return RunResult()  # deleted since the list was taken
            exchange = self._registry.get(name)
            total = RunResult()
            try:
                logs = self._broker.partitions(name)
                self._listen(name, logs)
                for partition, source in enumerate(logs):
                    if total.records >= budget:
                        break
                    state = self._state(exchange, partition)
                    if source.high_watermark == state.position.offset:
                        continue
                    total = _add(total, self._step(
                        exchange, matcher, partition, source, state, budget - total.records
                    ))
            except (EngineError, RecordError) as exc:
                self._pause(name, _explain(name, exc))
                return replace(total, paused=(name,))
            self._errors.pop(name, None)
            return total

    def _pause(self, name: str, error: str) -> None:
        if self._errors.get(name) != error:
            log.warning("routing of exchange %r paused: %s", name, error)
        self._errors[name] = error
        self._retry_at[name] = self._clock.monotonic() + self._retry_interval_s

    def _listen(self, name: str, logs: list[PartitionLog]) -> None:
        for partition, partition_log in enumerate(logs):
            if self._listening.get((name, partition)) is not partition_log:
                partition_log.add_listener(self._wake.set)
                self._listening[(name, partition)] = partition_log

    def _position(self, exchange: Exchange, partition: int) -> Position:
        state = self._states.get((exchange.name, partition))
        if state is not None:
            return state.position
        start = exchange.start_offsets[partition] if partition < len(exchange.start_offsets) else 0
        return Position(exchange.incarnation, start)

    def _state(self, exchange: Exchange, partition: int) -> _State:
        key = (exchange.name, partition)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(self._position(exchange, partition))
        return state

    def _forget_deleted(self) -> None:
        """Delete the checkpoints of exchanges deleted (or declared anew) since they were made."""
        with self._registry.lock:
            declared = {e.name: e.incarnation for e in self._registry.exchanges()}
            for key, state in list(self._states.items()):
                if declared.get(key[0]) != state.position.incarnation:
                    self._forgotten[key] = sorted(state.sequences)
                    del self._states[key]
            for name in list(self._errors):
                if name not in declared:
                    del self._errors[name]
            for key, destinations in list(self._forgotten.items()):
                try:
                    self._store.forget(key[0], key[1], destinations)
                except EngineError as exc:
                    log.warning("cannot delete the checkpoint of %s yet: %s", key, exc)
                    return
                del self._forgotten[key]

    # ------------------------------------------------------------------ one step

    def _step(
        self,
        exchange: Exchange,
        matcher: Matcher,
        partition: int,
        source: PartitionLog,
        state: _State,
        budget: int,
    ) -> RunResult:
        """Route one batch of records of ``source`` from the checkpoint and checkpoint them."""
        position = state.position
        start, expired = position.offset, 0
        if start < source.log_start_offset:  # retention deleted records never routed
            expired = source.log_start_offset - start
            start = source.log_start_offset
            log.warning("exchange %r partition %d: offsets %d..%d expired before routing",
                        exchange.name, partition, position.offset, start - 1)
        if start > source.high_watermark:
            raise _StalledError(
                f"partition {partition} ends at offset {source.high_watermark} but routing "
                f"is checkpointed at {start}: was the topic deleted and created again? "
                "Delete and redeclare the exchange to route it from its end"
            )
        plan = plan_step(
            exchange, matcher, partition, source, start, budget,
            self._partitions_of, position.done if start == position.offset else {},
        )
        progress = _Progress()
        try:
            self._append_all(exchange, partition, state, plan, progress)
            self._make_durable(progress, source)
        except (EngineError, RecordError):
            self._checkpoint_partial(exchange, partition, state, plan, progress, start)
            raise
        new_position = Position(
            exchange.incarnation,
            plan.end_offset,
            position.routed + plan.routed,
            position.unroutable + plan.unroutable,
            position.expired + expired,
        )
        self._checkpoint(exchange, partition, state, new_position, progress)
        appended = sum(progress.appended.values())
        return RunResult(plan.records, appended, plan.unroutable)

    def _partitions_of(self, destination: str) -> int:
        """Partition count of a destination; raises UnknownTopicError (which pauses)."""
        return len(self._broker.partitions(destination))

    def _append_all(
        self, exchange: Exchange, partition: int, state: _State, plan: Plan, progress: _Progress
    ) -> None:
        for destination, groups in sorted(plan.groups.items()):  # a stable order
            known = state.sequences.get(destination, [])
            sequences = (known + [0] * len(groups))[: len(groups)]
            progress.sequences[destination] = sequences
            producer_id = self._producer_id(exchange, partition, destination)
            for dest_partition, records in enumerate(groups):
                if not records:
                    continue
                dest_log = self._broker.partition(destination, dest_partition)
                progress.logs[id(dest_log)] = dest_log
                key = (destination, dest_partition)
                pending = [records]  # split in halves while a batch exceeds max.message.bytes
                while pending:
                    chunk = pending.pop()
                    batch = _encode(chunk, producer_id, sequences[dest_partition],
                                    exchange if exchange.provenance else None, partition)
                    if len(batch) > dest_log.config.max_message_bytes and len(chunk) > 1:
                        pending += [chunk[len(chunk) // 2 :], chunk[: len(chunk) // 2]]
                        continue
                    sequences[dest_partition] = self._append_chunk(
                        dest_log, batch, producer_id, sequences[dest_partition], chunk,
                        exchange if exchange.provenance else None, partition,
                    )
                    progress.appended[key] = progress.appended.get(key, 0) + len(chunk)

    def _append_chunk(
        self,
        dest_log: PartitionLog,
        batch: bytes,
        producer_id: int,
        sequence: int,
        records: Sequence[RoutedRecord],
        provenance: Exchange | None,
        partition: int,
    ) -> int:
        """Append ``batch`` (``records`` numbered from ``sequence``); the next sequence number.

        Records the destination already holds from an interrupted step are recognised by
        their numbers and not appended again (see the module docstring, point 3).
        """
        try:
            dest_log.append(batch, wait_durable=False)  # a duplicate batch is simply answered
            return (sequence + len(records)) % _SEQUENCES
        except OutOfOrderSequenceError as exc:
            expected = exc.expected_sequence
        ahead = (expected - sequence) % _SEQUENCES
        if ahead >= _SEQUENCES // 2:  # behind: the destination lost records it had stored
            log.error("%s expects sequence %d of producer %d, the router is at %d: the "
                      "destination lost routed records; continuing from its number",
                      dest_log.directory.name, expected, producer_id, sequence)
            rest = records
        elif ahead >= len(records):
            return (sequence + len(records)) % _SEQUENCES  # all stored already
        else:
            rest = records[ahead:]
        dest_log.append(_encode(rest, producer_id, expected, provenance, partition),
                        wait_durable=False)
        return (expected + len(rest)) % _SEQUENCES

    def _make_durable(self, progress: _Progress, source: PartitionLog) -> None:
        """fsync what the step appended (and an async exchange topic) before its checkpoint."""
        for dest_log in progress.logs.values():
            if dest_log.config.durability == "async":
                dest_log.flush()
            else:
                dest_log.wait_durable(dest_log.log_end_offset)
        if source.config.durability == "async":
            source.flush()

    def _checkpoint(
        self,
        exchange: Exchange,
        partition: int,
        state: _State,
        position: Position,
        progress: _Progress,
    ) -> None:
        try:
            self._store.write(exchange.name, partition, position, progress.sequences)
        except EngineError as exc:
            self._set_in_doubt(exchange.name, state, f"checkpoint not written: {exc}")
            raise
        state.position = position
        state.sequences.update(progress.sequences)
        if state.in_doubt is not None:
            self._set_in_doubt(exchange.name, state, None)

    def _checkpoint_partial(
        self,
        exchange: Exchange,
        partition: int,
        state: _State,
        plan: Plan,
        progress: _Progress,
        start: int,
    ) -> None:
        """After a failed step, record its durable appends as ``done`` (point 2)."""
        if not progress.appended:
            return
        done = {key: set(offsets) for key, offsets in state.position.done.items()}
        if start != state.position.offset:
            done = {}
        for (destination, dest_partition), count in progress.appended.items():
            records = plan.groups[destination][dest_partition][:count]
            done.setdefault((destination, dest_partition), set()).update(r.offset for r in records)
        position = replace(
            state.position, offset=start, done={k: frozenset(v) for k, v in done.items()}
        )
        try:
            self._make_durable(progress, self._broker.partition(exchange.name, partition))
            self._checkpoint(exchange, partition, state, position, progress)
        except EngineError as exc:
            self._set_in_doubt(exchange.name, state, str(exc))

    def _set_in_doubt(self, name: str, state: _State, cause: str | None) -> None:
        state.in_doubt = cause
        if cause is None:
            others = [s.in_doubt for (n, _), s in self._states.items() if n == name and s.in_doubt]
            self._registry.set_in_doubt(name, others[0] if others else None)
        else:
            self._registry.set_in_doubt(name, cause)

    def _producer_id(self, exchange: Exchange, partition: int, destination: str) -> int:
        key = (exchange.incarnation, exchange.name, partition, destination)
        producer_id = self._producer_ids.get(key)
        if producer_id is None:
            digest = hashlib.blake2b("\x00".join(map(str, key)).encode(), digest_size=8)
            producer_id = int.from_bytes(digest.digest(), "big") >> 1  # 63 bits, >= 0
            self._producer_ids[key] = producer_id
        return producer_id


class _StalledError(EngineError):
    """A step cannot start; the message says why (it becomes the exchange's error)."""


def _explain(name: str, exc: Exception) -> str:
    if isinstance(exc, UnknownTopicError):
        if exc.topic == name:
            return f"the exchange topic {name!r} does not exist"
        return (f"destination topic {exc.topic!r} does not exist; routing waits until it is "
                "created or its bindings are removed")
    if isinstance(exc, BatchTooLargeError):
        return f"{exc}; raise the destination's max.message.bytes"
    return str(exc)


def _add(total: RunResult, more: RunResult) -> RunResult:
    return RunResult(
        total.records + more.records,
        total.appended + more.appended,
        total.unroutable + more.unroutable,
        total.paused + more.paused,
    )


def _encode(
    records: Sequence[RoutedRecord],
    producer_id: int,
    sequence: int,
    provenance: Exchange | None,
    partition: int,
) -> bytes:
    if provenance is not None:
        records = [_with_provenance(r, provenance.name, partition) for r in records]
    return encode_routed(
        records, producer_id=producer_id, producer_epoch=_EPOCH, base_sequence=sequence
    )


def _with_provenance(record: RoutedRecord, exchange: str, partition: int) -> RoutedRecord:
    headers = [h for h in record.headers if h.key not in PROVENANCE_HEADERS]
    headers.append(Header(PROVENANCE_HEADERS[0], exchange.encode()))
    headers.append(Header(PROVENANCE_HEADERS[1], str(partition).encode()))
    headers.append(Header(PROVENANCE_HEADERS[2], str(record.offset).encode()))
    return record._replace(headers=tuple(headers), header_bytes=encode_headers(headers))
