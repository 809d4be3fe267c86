"""Where ``moldau replay`` sends what it reads: a handler, a projection, JSON lines, SQLite, topics.

Every target implements :class:`ReplayTarget`. ``write(items, before, after, on_error)``
handles one polled batch: ``before``/``after`` are the read positions around it. A failing
item either goes to ``on_error`` (``--skip-errors``: the DLQ) or stops the replay with
:class:`ReplayTargetError`, whose ``position`` is where a resumed replay retries.

Resuming: targets that keep the read position in their own storage, committed with their
data (SQLite, projections with a SQLite store), return it from ``open`` and resume exactly.
The JSON-lines file target records its flushed size in the resume file and truncates back to
it, also exact. Handlers, stdout and topics resume from the last resume-file checkpoint: items
after it are delivered again (at-least-once).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from moldau._replay_codec import StoredEvent
from moldau._replay_source import Item, Position
from moldau._types import ConsumerRecord, Header
from moldau.producer import Producer
from moldau.projections import Projection, ProjectionError, ReadModelStore

__all__ = [
    "HandlerTarget",
    "JsonLinesTarget",
    "ProjectionTarget",
    "ReplayTarget",
    "ReplayTargetError",
    "SQLiteTarget",
    "TopicTarget",
    "item_headers",
    "item_json",
]

OnError = Callable[[Any, BaseException], None]


class ReplayTargetError(Exception):
    """A target failed on ``item``; ``position`` is where a resumed replay starts again."""

    def __init__(self, item: Any, cause: BaseException, position: Position) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.item, self.cause, self.position = item, cause, position
        self.summary: Any = None  # the replay's ReplaySummary, set by the replay loop


class ReplayTarget(Protocol):
    """The seam between the replay loop and where items go."""

    description: str
    exact: bool  # resumes exactly (no item delivered twice across an interruption)

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        """Prepare (``state``: from the resume file, None for a new replay); return the
        position to continue from when the target keeps its own (``starts`` to start over)."""

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        """Deliver ``items``; returns how many were delivered without error."""

    def flush(self) -> dict[str, Any]:
        """Make what was written durable; return the state to put in the resume file."""

    def finish(self) -> None:
        """The replay completed: swap in, close files."""

    def close(self) -> None:
        """Release resources (also after a failure or interruption)."""


def _advance(position: Position, items: Sequence[Item]) -> Position:
    position = dict(position)
    for item in items:
        position[item.partition] = item.offset + 1
    return position


def _text(data: bytes | None) -> tuple[str | None, bool]:
    if data is None:
        return None, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def item_json(item: Item) -> str:
    """One event (or record) as a JSON object on one line; bytes that are not UTF-8 are
    base64 and the object says ``"encoding": "base64"`` for that field's name."""
    obj: dict[str, Any]
    binary: list[str] = []
    if isinstance(item, StoredEvent):
        obj = item._asdict()
        for name in ("data", "metadata"):
            obj[name], is_binary = _text(obj[name])
            if is_binary:
                binary.append(name)
    else:
        obj = {"topic": item.topic, "partition": item.partition, "offset": item.offset,
               "timestamp": item.timestamp}
        for name, value in (("key", item.key), ("value", item.value)):
            obj[name], is_binary = _text(value)
            if is_binary:
                binary.append(name)
        obj["headers"] = {h.key: _text(h.value)[0] for h in item.headers}
    if binary:
        obj["base64"] = binary
    return json.dumps(obj, ensure_ascii=False)


def item_headers(item: Item) -> list[Header]:
    """The headers a re-published item carries (an event's ``es.*`` headers, rebuilt)."""
    if isinstance(item, ConsumerRecord):
        return list(item.headers)
    headers = [Header("es.version", b"%d" % item.version),
               Header("es.id", item.event_id.encode()), Header("es.type", item.type.encode()),
               Header("es.type_version", b"%d" % item.type_version)]
    if item.metadata:
        headers.append(Header("es.metadata", item.metadata))
    return headers


def item_key_value(item: Item) -> tuple[bytes | None, bytes | None]:
    if isinstance(item, StoredEvent):
        return item.stream.encode(), item.data
    return item.key, item.value


class HandlerTarget:
    """Calls ``handler(item)`` for each item (at-least-once across an interruption)."""

    exact = False

    def __init__(self, handler: Callable[[Any], object], description: str) -> None:
        self.handler, self.description = handler, f"handler {description}"

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        return None

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        handler, start, failed = self.handler, 0, 0
        while True:
            item = None
            try:
                for item in itertools.islice(items, start, None):
                    handler(item)
            except Exception as exc:
                index = next(i for i in range(start, len(items)) if items[i] is item)
                if on_error is None:
                    position = _advance(before, items[:index])
                    position[items[index].partition] = items[index].offset
                    raise ReplayTargetError(item, exc, position) from exc
                on_error(item, exc)
                failed += 1
                start = index + 1
                continue
            return len(items) - failed

    def flush(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        return None

    def close(self) -> None:
        return None


class JsonLinesTarget:
    """JSON lines to a file (exact resume: truncated back to the last checkpoint) or stdout."""

    def __init__(self, path: str, stdout: IO[str]) -> None:
        self.path = path
        self.exact = path != "-"
        self.description = "JSON lines to stdout" if path == "-" else f"JSON lines to {path}"
        self._stdout = stdout
        self._file: IO[str] | None = None

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        if self.path == "-":
            return None
        size = int((state or {}).get("bytes", 0))
        handle = open(self.path, "a+" if state else "w", encoding="utf-8")  # noqa: SIM115
        if state:
            handle.truncate(size)
            handle.seek(size)
        self._file = handle
        return None

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        out = self._file if self._file is not None else self._stdout
        out.write("".join([item_json(item) + "\n" for item in items]))
        return len(items)

    def flush(self) -> dict[str, Any]:
        if self._file is None:
            self._stdout.flush()
            return {}
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"bytes": self._file.tell()}

    def finish(self) -> None:
        self.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_EVENT_COLUMNS = ("topic TEXT, partition INTEGER, offset INTEGER, timestamp_ms INTEGER, "
                  "stream TEXT, version INTEGER, type TEXT, type_version INTEGER, "
                  "event_id TEXT, data BLOB, metadata BLOB, PRIMARY KEY (partition, offset)")
_RECORD_COLUMNS = ("topic TEXT, partition INTEGER, offset INTEGER, timestamp_ms INTEGER, "
                   "key BLOB, value BLOB, headers TEXT, PRIMARY KEY (partition, offset)")


class SQLiteTarget:
    """Rows in a SQLite file (table ``events``, or ``records`` for raw records); the read
    position commits in the same transaction (table ``_moldau_replay``): exact resume."""

    exact = True

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.description = f"SQLite file {path}"
        self._conn: sqlite3.Connection | None = None

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn = conn
        conn.execute(f"CREATE TABLE IF NOT EXISTS events ({_EVENT_COLUMNS})")
        conn.execute(f"CREATE TABLE IF NOT EXISTS records ({_RECORD_COLUMNS})")
        conn.execute("CREATE TABLE IF NOT EXISTS _moldau_replay (id INTEGER PRIMARY KEY, "
                     "position TEXT NOT NULL)")
        row = conn.execute("SELECT position FROM _moldau_replay WHERE id = 1").fetchone()
        if state is None or row is None:
            return None
        return {int(p): int(o) for p, o in json.loads(row[0]).items()}

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        conn = self._conn
        assert conn is not None
        events = [tuple(e) for e in items if isinstance(e, StoredEvent)]
        records = [(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value,
                    json.dumps({h.key: _text(h.value)[0] for h in r.headers}))
                   for r in items if isinstance(r, ConsumerRecord)]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             events)
            conn.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?)", records)
            conn.execute("INSERT OR REPLACE INTO _moldau_replay VALUES (1, ?)",
                         (json.dumps({str(p): o for p, o in after.items()}),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(items)

    def flush(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ProjectionTarget:
    """Rebuilds ``projection`` into a fresh store, swapped in when the replay completes."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self.description = f"projection {projection.name} ({projection.store.describe()})"
        self.exact = projection.store.transactional
        self._fresh: ReadModelStore | None = None

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        fresh = self.projection.store.fresh(resume=state is not None)
        fresh.open(self.projection)
        self._fresh = fresh
        if state is None:
            return None
        return fresh.load_position() or dict(starts)  # a memory model is gone: start over

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        try:
            return self.projection.fold(items, before, after, on_error, store=self._fresh)
        except ProjectionError as exc:
            assert self._fresh is not None
            position = self._fresh.load_position() or before
            raise ReplayTargetError(exc.event, exc.__cause__ or exc, position) from exc

    def flush(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        assert self._fresh is not None
        store = self.projection.store
        store.open(self.projection)
        store.swap_in(self._fresh)
        self._fresh = None

    def close(self) -> None:
        if self._fresh is not None and self._fresh is not self.projection.store:
            self._fresh.close()


class TopicTarget:
    """Re-publishes items to ``topic`` (key, value, headers), at most ``rate`` per second."""

    exact = False

    def __init__(self, server: str | None, topic: str, rate: float | None) -> None:
        self.topic, self.rate = topic, rate
        self.description = f"topic {topic}" + (f" at {rate:g}/s" if rate else "")
        self._producer = Producer(server)
        self._sent = 0
        self._started = time.monotonic()

    def open(self, state: dict[str, Any] | None, starts: Position) -> Position | None:
        self._started = time.monotonic()
        return None

    def write(self, items: Sequence[Item], before: Position, after: Position,
              on_error: OnError | None) -> int:
        send = self._producer.send
        for item in items:
            if self.rate:
                self._pace()
            key, value = item_key_value(item)
            send(self.topic, value, key=key, headers=item_headers(item))
            self._sent += 1
        return len(items)

    def _pace(self) -> None:
        assert self.rate
        due = self._started + self._sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def flush(self) -> dict[str, Any]:
        self._producer.flush()
        return {}

    def finish(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.close()


@contextlib.contextmanager
def closing_target(target: ReplayTarget) -> Iterator[ReplayTarget]:
    try:
        yield target
    finally:
        target.close()
