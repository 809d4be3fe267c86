"""Projections and handlers the replay tests name by ``module:attr`` (no tests here).

The SQLite file is chosen by ``$MOLDAU_TEST_REPLAY_DB`` when this module is first imported,
and the topic by ``$MOLDAU_TEST_REPLAY_TOPIC``, so a subprocess replay builds the same model.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from typing import Any

from moldau.projections import Projection, SQLiteStore
from moldau.v1 import eventstore_pb2 as pb

TOPIC = os.environ.get("MOLDAU_TEST_REPLAY_TOPIC", "replay-orders")
DB = os.environ.get("MOLDAU_TEST_REPLAY_DB", "replay-summary.db")

summary = Projection("replay-summary", TOPIC, category="order", store=SQLiteStore(DB))


@summary.init
def _create(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE orders (stream TEXT PRIMARY KEY, total INTEGER NOT NULL, "
               "events INTEGER NOT NULL, last_version INTEGER NOT NULL)")


@summary.on("OrderPlaced", "ItemAdded")
def _add(db: sqlite3.Connection, event: Any) -> None:
    amount = json.loads(event.data)["amount"]
    if os.environ.get("MOLDAU_TEST_CRASH_AT") == f"{event.stream}/{event.version}":
        os._exit(9)  # a crash between the handler's changes and the commit
    db.execute("INSERT INTO orders VALUES (?, ?, 1, ?) ON CONFLICT(stream) DO UPDATE SET "
               "total = total + excluded.total, events = events + 1, "
               "last_version = excluded.last_version", (event.stream, amount, event.version))


SEEN: list[Any] = []


def collect(event: Any) -> None:
    SEEN.append(event)


def fail_on_poison(event: Any) -> None:
    if b"poison" in event.data:
        raise ValueError(f"cannot handle {event.stream} v{event.version}")
    SEEN.append(event)


def orders(db_path: str) -> dict[str, tuple[int, int, int]]:
    """The ``orders`` table of a summary file: stream -> (total, events, last_version)."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT stream, total, events, last_version FROM orders")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def append(stub: Any, topic: str, stream: str, event_type: str, amount: int, *,
           poison: bool = False) -> None:
    body: dict[str, Any] = {"amount": amount}
    if poison:
        body["poison"] = True
    stub.AppendToStream(pb.AppendToStreamRequest(
        topic=topic, stream=stream, special=pb.EXPECTED_VERSION_ANY,
        events=[pb.EventToAppend(type=event_type, data=json.dumps(body).encode(),
                                 event_id=str(uuid.uuid4()))]))
