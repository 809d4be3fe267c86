"""Planning a routing step: read exchange records, match them, group them per destination.

This is the router's per-record hot path, kept apart from the router's bookkeeping. For each
record from ``start`` on it takes the routing key (see ``matcher``), asks the exchange's
matcher for destinations (the alternate topic when none match), picks each destination's
partition and appends the record to that destination partition's group. Groups keep exchange
order; the plan is a pure function of the records, the bindings and the destinations'
partition counts, which the router's replay argument relies on.

Destination partition: a keyed record goes to Kafka's partition for its key
(``to_positive(murmur2(key)) % partitions``); an unkeyed record to
``(exchange partition + offset // UNKEYED_BLOCK) % partitions``. Hashes are memoised per key
(up to ``HASH_MEMO_ENTRIES``), since keys repeat; single-partition destinations skip all this.

Concurrency: a plan belongs to the step that made it; the matcher is used under the
registry's lock (the caller's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter

from engine.log.partition_log import PartitionLog
from engine.partitioner import murmur2, to_positive
from engine.views.routing.checkpoints import DestinationPartition
from engine.views.routing.matcher import Matcher, routing_key
from engine.views.routing.reframe import RoutedRecord, read_records
from engine.views.routing.types import Exchange

__all__ = ["HASH_MEMO_ENTRIES", "READ_BYTES", "UNKEYED_BLOCK", "Plan", "destination_partition",
           "plan_step"]

READ_BYTES = 1 << 20
UNKEYED_BLOCK = 1024
HASH_MEMO_ENTRIES = 65_536
_OFFSET = itemgetter(0)  # RoutedRecord.offset
_hashes: dict[bytes, int] = {}  # key -> to_positive(murmur2(key)); a pure function, so shared


@dataclass(slots=True)
class Plan:
    """One step's work.

    Attributes:
        end_offset: the step covers exchange offsets ``[start, end_offset)``.
        records: exchange records read at or above ``start``.
        routed: records that matched a binding.
        unroutable: records that matched none.
        groups: destination -> per destination partition, the records to append, in order.
    """

    end_offset: int
    records: int = 0
    routed: int = 0
    unroutable: int = 0
    groups: dict[str, list[list[RoutedRecord]]] = field(default_factory=dict)


def destination_partition(record: RoutedRecord, source_partition: int, partitions: int) -> int:
    """The destination partition of ``record`` (see the module docstring)."""
    key = record.key
    if key is None:
        return (source_partition + record.offset // UNKEYED_BLOCK) % partitions
    hashed = _hashes.get(key)
    if hashed is None:
        if len(_hashes) >= HASH_MEMO_ENTRIES:
            _hashes.clear()
        hashed = _hashes[key] = to_positive(murmur2(key))
    return hashed % partitions


def plan_step(
    exchange: Exchange,
    matcher: Matcher,
    partition: int,
    source: PartitionLog,
    start: int,
    budget: int,
    partitions_of: Callable[[str], int],
    done: Mapping[DestinationPartition, frozenset[int]],
) -> Plan:
    """Plan routing ``source`` from ``start``: whole batches, until ``budget`` records.

    Args:
        exchange: the exchange being routed.
        matcher: its bindings.
        partition: ``source``'s partition number.
        source: the exchange partition's log.
        start: the first offset to route.
        budget: stop after the batch that reaches this many records.
        partitions_of: partition count of a destination topic; raises UnknownTopicError.
        done: records (by offset) already appended to a destination partition; left out.
    """
    plan = Plan(start)
    offset = start
    high_watermark = source.high_watermark
    while offset < high_watermark and plan.records < budget:
        data = source.read(offset, READ_BYTES).data
        if not data:
            break
        position = 0
        while position < len(data) and plan.records < budget:
            header, records = read_records(data, position)
            position += header.size
            if not header.is_control:
                if records and records[0].offset < offset:
                    records = [r for r in records if r.offset >= offset]
                _group(plan, records, exchange, matcher, partition, partitions_of)
            offset = max(offset, header.next_offset)
    plan.end_offset = offset
    for lists in plan.groups.values():  # buckets interleave: back to exchange order
        for group in lists:
            group.sort(key=_OFFSET)  # timsort: linear on the few sorted runs there are
    if done:
        _leave_out(plan, done)
    return plan


def _group(
    plan: Plan,
    records: list[RoutedRecord],
    exchange: Exchange,
    matcher: Matcher,
    partition: int,
    partitions_of: Callable[[str], int],
) -> None:
    """Match ``records`` (one batch) and add each to its destination partitions' groups.

    Records are first bucketed by their destination set (the matcher returns one frozenset
    object per distinct answer, so that is one dict operation per record); the buckets are
    then spread over the destinations, and :func:`plan_step` restores exchange order.
    """
    match = matcher.match
    buckets: dict[frozenset[str], list[RoutedRecord]] = {}
    for record in records:
        headers = record.headers
        destinations = match(
            routing_key(record.key, headers) if headers else (record.key or b""), headers
        )
        bucket = buckets.get(destinations)
        if bucket is None:
            buckets[destinations] = [record]
        else:
            bucket.append(record)
    plan.records += len(records)
    groups = plan.groups
    for destinations, bucket in buckets.items():
        if destinations:
            plan.routed += len(bucket)
            targets: Iterable[str] = destinations
        else:
            plan.unroutable += len(bucket)
            if exchange.alternate is None:
                continue
            targets = (exchange.alternate,)
        for destination in targets:
            lists = groups.get(destination)
            if lists is None:
                lists = groups[destination] = [[] for _ in range(partitions_of(destination))]
            if len(lists) == 1:
                lists[0].extend(bucket)
            else:
                count = len(lists)
                for record in bucket:
                    lists[destination_partition(record, partition, count)].append(record)


def _leave_out(plan: Plan, done: Mapping[DestinationPartition, frozenset[int]]) -> None:
    """Drop records a failed attempt of this step already appended (its ``done`` offsets)."""
    for (destination, dest_partition), offsets in done.items():
        lists = plan.groups.get(destination)
        if lists is not None and dest_partition < len(lists):
            lists[dest_partition] = [
                r for r in lists[dest_partition] if r.offset not in offsets
            ]
