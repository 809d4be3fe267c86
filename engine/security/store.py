"""ACL bindings, stored as records in the one-partition compacted internal topic ``__acls``.

Record layout (one record per binding; the latest per key wins, which is what compaction
keeps)::

    key    the canonical binding encoding of :func:`~engine.security.acls.encode_binding`
           (int16 version 1, then principal, resource type, pattern type, resource name,
           operation, permission: each int16 length + UTF-8)
    value  UTF-8 JSON, keys sorted: {"created_ms": int, "v": 1}; a null value (tombstone)
           removes the binding

Invariants: the in-memory set equals a replay of the topic. On open the store replays the
partition from its log start; afterwards a change is applied to the set only once it is durable
(the topic is created with ``durability=fsync``, so an acknowledged ACL change survives kill -9
and power loss). ``version`` rises with every applied change; the authorizer compares it to drop
its cached decisions.

Concurrency: any thread may call any method. ACL changes are rare, so one ``_write_lock`` is
held across append, fsync and apply: changes reach the set in log order without per-key offset
bookkeeping. ``_lock`` guards the set for readers.
"""

from __future__ import annotations

import builtins
import json
import logging
import struct
import threading
from collections.abc import Iterable

from engine.broker import Broker
from engine.clock import Clock
from engine.errors import InvalidAclError
from engine.internal_topics import ensure_internal_topic, keyed_records
from engine.log.partition_log import PartitionLog
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from engine.security.acls import AclBinding, AclFilter, decode_binding, encode_binding

__all__ = ["ACLS_TOPIC", "AclStore"]

log = logging.getLogger(__name__)

ACLS_TOPIC = "__acls"
_VALUE_VERSION = 1
_MAX_RECORDS_PER_BATCH = 1000
_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",  # explicit: a broker-wide "async" default must not weaken ACLs
    "segment.bytes": str(16 * 1024 * 1024),
}


class AclStore:
    """The broker's ACL bindings; create with :meth:`open`. An :class:`AclSource`."""

    def __init__(self, broker: Broker, clock: Clock) -> None:
        self._broker = broker
        self._clock = clock
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._bindings: dict[AclBinding, int] = {}  # binding -> created_ms
        self._version = 0
        self.skipped_records = 0

    @classmethod
    def open(cls, broker: Broker, clock: Clock) -> AclStore:
        """Create ``__acls`` if missing, then replay it."""
        ensure_internal_topic(broker, ACLS_TOPIC, 1, _TOPIC_CONFIG)
        store = cls(broker, clock)
        store._replay(broker.partition(ACLS_TOPIC, 0))
        return store

    def _replay(self, partition_log: PartitionLog) -> None:
        for record in keyed_records(partition_log):
            assert record.key is not None  # keyed_records yields keyed records only
            self._apply_record(record.key, record.value, record.offset)

    def _apply_record(self, key: bytes, value: bytes | None, log_offset: int) -> None:
        try:
            binding = decode_binding(key)
            created_ms = None if value is None else int(json.loads(value)["created_ms"])
        except (ValueError, KeyError, TypeError, struct.error, InvalidAclError) as exc:
            self.skipped_records += 1
            log.warning("skipped unreadable %s record at %d: %s", ACLS_TOPIC, log_offset, exc)
            return
        self._apply([(binding, created_ms)])

    def _apply(self, changes: Iterable[tuple[AclBinding, int | None]]) -> None:
        with self._lock:
            for binding, created_ms in changes:
                if created_ms is None:
                    self._bindings.pop(binding, None)
                else:
                    self._bindings.setdefault(binding, created_ms)
            self._version += 1

    # ------------------------------------------------------------------ API

    @property
    def version(self) -> int:
        """Rises with every change applied (the authorizer's cache key)."""
        return self._version

    def add(self, bindings: Iterable[AclBinding]) -> builtins.list[AclBinding]:
        """Store ``bindings`` durably; returns those that were not already present.

        Raises:
            InvalidAclError: a binding is malformed (nothing is stored).
            StorageError: the append or its fsync failed; nothing is acknowledged.
        """
        wanted = sorted(set(bindings))
        for binding in wanted:
            binding.validate()
        with self._write_lock:
            with self._lock:
                new = [b for b in wanted if b not in self._bindings]
            now_ms = self._clock.now_ms()
            self._write([(b, now_ms) for b in new], now_ms)
        return new

    def remove(self, acl_filter: AclFilter) -> builtins.list[AclBinding]:
        """Write tombstones for every binding ``acl_filter`` matches; returns them."""
        with self._write_lock:
            doomed = self.list(acl_filter)
            self._write([(b, None) for b in doomed], self._clock.now_ms())
        return doomed

    def list(self, acl_filter: AclFilter | None = None) -> list[AclBinding]:
        """The bindings ``acl_filter`` matches (all when None), sorted."""
        with self._lock:
            return sorted(
                b for b in self._bindings if acl_filter is None or acl_filter.matches(b)
            )

    def created_ms(self, binding: AclBinding) -> int | None:
        """When ``binding`` was added (ms since the epoch), None if it is not present."""
        with self._lock:
            return self._bindings.get(binding)

    def _write(self, changes: builtins.list[tuple[AclBinding, int | None]], now_ms: int
               ) -> None:
        """Caller holds ``_write_lock``: append, wait for fsync, then apply, chunk by chunk."""
        partition_log = self._broker.partition(ACLS_TOPIC, 0)
        for start in range(0, len(changes), _MAX_RECORDS_PER_BATCH):
            chunk = changes[start : start + _MAX_RECORDS_PER_BATCH]
            records = [
                NewRecord(
                    None if created_ms is None else _encode_value(created_ms),
                    encode_binding(binding),
                )
                for binding, created_ms in chunk
            ]
            result = partition_log.append(encode_batch(records, timestamp=now_ms),
                                          wait_durable=False)
            partition_log.wait_durable(result.last_offset + 1)
            self._apply(chunk)


def _encode_value(created_ms: int) -> bytes:
    return json.dumps({"created_ms": created_ms, "v": _VALUE_VERSION}, sort_keys=True).encode()
