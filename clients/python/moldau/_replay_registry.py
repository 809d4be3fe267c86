"""The projection registry: one record per projection in a compacted topic, for operators.

Layout: topic ``moldau.projections`` (one partition, ``cleanup.policy=compact``), key = the
projection name (UTF-8), value = a JSON object (:meth:`ProjectionStatus.to_json`); a null
value (tombstone) removes a projection from the registry. Runners write their record every
few seconds and when they stop, so ``moldau projections list|status`` works from any machine.

The name does not start with ``__`` because clients may not create the broker's internal
topics; the registry is a client convention, derived data that a runner rewrites, never the
only copy of anything (the checkpoint lives with the read model).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moldau.admin import Admin
from moldau.consumer import Consumer
from moldau.errors import MoldauError, TopicExistsError
from moldau.producer import Producer

__all__ = [
    "REGISTRY_TOPIC",
    "ProjectionError",
    "ProjectionStatus",
    "ensure_registry",
    "read_registry",
    "remove_status",
    "write_status",
]

REGISTRY_TOPIC = "moldau.projections"


class ProjectionError(MoldauError):
    """A projection's handler failed on an event; the checkpoint stays at that event.

    Attributes:
        event: The event the handler failed on (None for a store error).
    """

    def __init__(self, message: str, event: object) -> None:
        super().__init__(message)
        self.event = event


@dataclass(slots=True)
class ProjectionStatus:
    """Where a projection stands.

    Attributes:
        name: The projection's name.
        topic: The store topic it reads.
        category: The category it is restricted to (None: every stream).
        state: ``running``, ``caught-up``, ``stopped``, ``failed``, ``reset`` or ``rebuilt``.
        positions: Next offset per partition (its checkpoint).
        lag: Records between the positions and the partitions' high watermarks.
        events_applied: Events folded into the read model by this runner (or rebuild).
        last_error: The last handler or store error, None if none.
        updated_ms: When this status was taken (ms since the epoch).
        store: The read model's store (``memory``, ``sqlite:/path``, ``callback:...``).
        code: ``package.module:attr`` of the projection object, when it could be found.
    """

    name: str
    topic: str
    category: str | None = None
    state: str = "stopped"
    positions: dict[int, int] = field(default_factory=dict)
    lag: int | None = None
    events_applied: int = 0
    last_error: str | None = None
    updated_ms: int = 0
    store: str = ""
    code: str | None = None

    def to_json(self) -> str:
        record = asdict(self)
        record["positions"] = {str(p): o for p, o in self.positions.items()}
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProjectionStatus:
        record: dict[str, Any] = json.loads(text)
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in record.items() if k in known}
        values["positions"] = {int(p): int(o) for p, o in (record.get("positions") or {}).items()}
        return cls(**values)


def ensure_registry(admin: Admin) -> None:
    """Create the registry topic unless it exists."""
    with contextlib.suppress(TopicExistsError):
        admin.create_topic(REGISTRY_TOPIC, 1, {"cleanup.policy": "compact"})


def write_status(producer: Producer, status: ProjectionStatus) -> None:
    """Queue the status record (the caller flushes when it must be durable)."""
    status.updated_ms = status.updated_ms or int(time.time() * 1000)
    producer.send(REGISTRY_TOPIC, status.to_json().encode(), key=status.name.encode(),
                  partition=0)


def remove_status(producer: Producer, name: str) -> None:
    producer.send(REGISTRY_TOPIC, None, key=name.encode(), partition=0)


def read_registry(server: str | None, timeout_ms: float = 5000) -> dict[str, ProjectionStatus]:
    """Every projection's latest record (an empty dict if the registry does not exist yet)."""
    with Admin(server) as admin:
        topics = {t.name for t in admin.list_topics()}
        if REGISTRY_TOPIC not in topics:
            return {}
        end = admin.list_offsets(REGISTRY_TOPIC, "latest")[0].offset
    found: dict[str, ProjectionStatus] = {}
    if end == 0:
        return found
    deadline = time.monotonic() + timeout_ms / 1000
    with Consumer(server, auto_offset_reset="earliest") as consumer:
        consumer.assign([(REGISTRY_TOPIC, 0)])
        consumer.seek((REGISTRY_TOPIC, 0), 0)
        while consumer.position((REGISTRY_TOPIC, 0)) < end and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200, max_records=1000):
                name = (record.key or b"").decode("utf-8", "replace")
                if record.value is None:
                    found.pop(name, None)
                    continue
                try:
                    found[name] = ProjectionStatus.from_json(record.value)
                except (ValueError, TypeError):
                    continue  # a record this version does not understand
    return found
