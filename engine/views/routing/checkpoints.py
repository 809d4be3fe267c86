"""The router's progress, stored in the compacted internal topic ``__exchange_checkpoints``.

Per exchange partition the router keeps a *position* and, per destination topic, the next
idempotent-producer sequence number for each destination partition. Records (see ``store``)::

    key ["position", <exchange>, <partition>]
        value {"v": 1, "incarnation", "offset", "routed", "unroutable", "expired",
               "done": [[<destination>, <dest partition>, [[start, end], ...]], ...]}
    key ["sequences", <exchange>, <partition>, <destination>]
        value {"v": 1, "incarnation", "next": [<next sequence of dest partition 0>, ...]}

``offset``: every exchange record below it is routed. ``done``: exchange offsets at or above
``offset`` (half-open runs) already appended to that destination partition by a routing step
that failed part-way; they are skipped when the step is retried. ``next`` counts every record
this (exchange partition, destination) pair has appended to that partition, modulo 2**31.

A checkpoint is one position record plus the sequence records of the destinations its step
wrote, in one batch: all of it is stored or none of it (see ``store``), so a position never
goes with sequences of another step. Records of another incarnation (an exchange deleted and
declared again) are ignored on replay and deleted by :meth:`CheckpointStore.forget`.

Concurrency: the router is the only writer and serialises its calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.broker import Broker
from engine.clock import Clock
from engine.log.partition_log import PartitionLog
from engine.views.routing.store import (
    KeyedRecord,
    decode_json,
    encode_json,
    ensure_topic,
    replay,
    write_records,
)

__all__ = ["CHECKPOINTS_TOPIC", "CheckpointStore", "DestinationPartition", "Position"]

log = logging.getLogger(__name__)

CHECKPOINTS_TOPIC = "__exchange_checkpoints"
_VERSION = 1

DestinationPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Position:
    """How far the router got in one exchange partition (see the module docstring)."""

    incarnation: str
    offset: int
    routed: int = 0
    unroutable: int = 0
    expired: int = 0
    done: Mapping[DestinationPartition, frozenset[int]] = field(default_factory=dict)


@dataclass(slots=True)
class Loaded:
    """One exchange partition's checkpoint as replayed: its position and sequences."""

    position: Position | None = None
    sequences: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # incarnation


def _runs(offsets: Iterable[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for offset in sorted(offsets):
        if runs and runs[-1][1] == offset:
            runs[-1][1] = offset + 1
        else:
            runs.append([offset, offset + 1])
    return runs


def _position_value(position: Position) -> bytes:
    done = [
        [destination, partition, _runs(offsets)]
        for (destination, partition), offsets in sorted(position.done.items())
        if offsets
    ]
    return encode_json({
        "v": _VERSION,
        "incarnation": position.incarnation,
        "offset": position.offset,
        "routed": position.routed,
        "unroutable": position.unroutable,
        "expired": position.expired,
        "done": done,
    })


def _decode_position(body: dict[str, object]) -> Position:
    if body.get("v") != _VERSION:
        raise ValueError(f"unknown checkpoint version {body.get('v')!r}")
    done: dict[DestinationPartition, frozenset[int]] = {}
    raw_done = body["done"]
    if not isinstance(raw_done, list):
        raise ValueError("done is not a list")
    for destination, partition, runs in raw_done:
        done[(str(destination), int(partition))] = frozenset(
            offset for start, end in runs for offset in range(int(start), int(end))
        )
    return Position(
        str(body["incarnation"]),
        _int(body["offset"]),
        _int(body["routed"]),
        _int(body["unroutable"]),
        _int(body["expired"]),
        done,
    )


def _int(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


class CheckpointStore:
    """Reads and writes the router's checkpoints; create with :meth:`open`."""

    def __init__(self, partition_log: PartitionLog, clock: Clock) -> None:
        self._log = partition_log
        self._clock = clock
        self.skipped_records = 0

    @classmethod
    def open(cls, broker: Broker, clock: Clock) -> tuple[CheckpointStore, dict[tuple[str, int],
                                                                                  Loaded]]:
        """Create the topic if missing; the store and every checkpoint found in it."""
        store = cls(ensure_topic(broker, CHECKPOINTS_TOPIC), clock)
        return store, store._replay()

    def _replay(self) -> dict[tuple[str, int], Loaded]:
        loaded: dict[tuple[str, int], Loaded] = {}
        for offset, key, value in replay(self._log):
            try:
                parts = decode_json(key)
                body = None if value is None else decode_json(value)
                entry = loaded.setdefault((str(parts[1]), int(parts[2])), Loaded())
                if parts[0] == "position":
                    entry.position = None if body is None else _decode_position(body)
                elif parts[0] == "sequences":
                    if body is None:
                        entry.sequences.pop(str(parts[3]), None)
                    else:
                        sequences = [_int(s) for s in body["next"]]
                        entry.sequences[str(parts[3])] = (str(body["incarnation"]), sequences)
                else:
                    raise ValueError(f"unknown record kind {parts[0]!r}")
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self.skipped_records += 1
                log.warning("skipped unreadable %s record at %d: %s",
                            CHECKPOINTS_TOPIC, offset, exc)
        return loaded

    def write(
        self,
        exchange: str,
        partition: int,
        position: Position,
        sequences: Mapping[str, Sequence[int]],
    ) -> None:
        """Store ``position`` and the ``sequences`` of the destinations it changed, atomically.

        Raises:
            StorageError: nothing is acknowledged; the previous checkpoint stands.
        """
        records: list[KeyedRecord] = [
            (encode_json(["position", exchange, partition]), _position_value(position))
        ]
        for destination, values in sorted(sequences.items()):
            records.append((
                encode_json(["sequences", exchange, partition, destination]),
                encode_json({"v": _VERSION, "incarnation": position.incarnation,
                             "next": list(values)}),
            ))
        write_records(self._log, records, self._clock.now_ms(), atomic=True)

    def forget(self, exchange: str, partition: int, destinations: Iterable[str]) -> None:
        """Delete a checkpoint (tombstones for its position and its destinations' sequences)."""
        records: list[KeyedRecord] = [(encode_json(["position", exchange, partition]), None)]
        records.extend(
            (encode_json(["sequences", exchange, partition, d]), None) for d in sorted(destinations)
        )
        write_records(self._log, records, self._clock.now_ms(), atomic=True)
