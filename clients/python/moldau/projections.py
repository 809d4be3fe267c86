"""Projections (the query side of CQRS): named, checkpointed folds of events into read models.

::

    from moldau.projections import Projection, ProjectionRunner, SQLiteStore

    summary = Projection("order-summary", topic="orders", category="order",
                         store=SQLiteStore("summary.db"))

    @summary.init
    def _(db):
        db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER, status TEXT)")

    @summary.on("OrderPlaced")
    def _(db, event):
        data = json.loads(event.data)
        db.execute("INSERT INTO orders VALUES (?, ?, 'placed')", (event.stream, data["total"]))

    ProjectionRunner(summary, "127.0.0.1:7654").run()   # catch up, then follow live

A handler gets the read model (what the store holds: a dict, a ``sqlite3.Connection``, or the
user's object) and a :class:`StoredEvent`. Upcasters (any object with ``upcast(event)``) are
applied before the handlers, so handlers only see the current shape of each event type.

Stores and their guarantees:

- :class:`MemoryStore`: a dict in this process; gone on restart (rebuilt from the log).
- :class:`SQLiteStore`: a file; each batch of events and the checkpoint (next offset per
  partition) commit in ONE transaction, so a crash anywhere leaves the file at a batch
  boundary and a restart resumes exactly after it: nothing is applied twice or skipped.
- :class:`CallbackStore`: the user's model and two callbacks (load and save the position).
  The position is saved after the handlers ran, so a crash in between applies those events
  again after a restart: at-least-once; handlers must be idempotent.

Errors: a handler that raises stops the fold at that event. Transactional stores roll the
batch back and commit the events before it, so the checkpoint points at the failing event and
a restart (after a fix) retries it; :class:`ProjectionError` names it. Runners are in
:mod:`moldau._replay_runner` (re-exported here); ``moldau replay`` rebuilds a projection
into a fresh store and swaps it in (:meth:`ReadModelStore.fresh`, :meth:`~ReadModelStore.swap_in`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from moldau._eventstore_types import EventPosition, RecordedEvent
from moldau._replay_codec import StoredEvent
from moldau._replay_registry import ProjectionError, ProjectionStatus
from moldau._replay_source import Position, Selection

__all__ = [
    "CallbackStore",
    "MemoryStore",
    "Projection",
    "ProjectionError",
    "ProjectionStatus",
    "ReadModelStore",
    "SQLiteStore",
    "StoredEvent",
    "Upcasting",
]

Handler = Callable[[Any, Any], None]
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class Upcasting(Protocol):
    """An upcaster registry (:class:`moldau.eventstore.UpcasterRegistry`)."""

    def upcast(self, event: Any) -> Any: ...

    def __len__(self) -> int: ...


class ReadModelStore(Protocol):
    """Where a projection's read model and checkpoint live (the seam between the stores).

    ``transactional`` stores commit the handlers' changes and the position together and can
    roll a batch back; the others apply changes as the handlers make them.
    """

    transactional: bool

    def open(self, projection: Projection) -> None:
        """Create or open the model; a new one gets ``projection``'s init hook."""

    def load_position(self) -> Position | None:
        """The committed checkpoint (next offset per partition), None for a new model."""

    def transaction(self, position: Position) -> contextlib.AbstractContextManager[Any]:
        """Yield the model; on a clean exit commit the changes with ``position``."""

    def reset(self) -> None:
        """Empty the model and forget the checkpoint."""

    def fresh(self, *, resume: bool = False) -> ReadModelStore:
        """A new, empty store of the same kind to rebuild into (``resume``: keep one left
        by an interrupted rebuild)."""

    def swap_in(self, fresh: ReadModelStore) -> None:
        """Replace this store's model and checkpoint with ``fresh``'s, atomically."""

    def describe(self) -> str: ...

    def close(self) -> None: ...


class Projection:
    """A named fold of one store topic's events (optionally one category) into a read model.

    Args:
        name: 1 to 200 of ``A-Z a-z 0-9 . _ -``; names the checkpoint and the registry record.
        topic: The event-store topic to read.
        category: Only streams named ``<category>-...``; None reads every stream.
        store: The read model's store (default: a new :class:`MemoryStore`).
        upcasters: Applied to each event before its handler.
    """

    def __init__(
        self,
        name: str,
        topic: str,
        category: str | None = None,
        *,
        store: ReadModelStore | None = None,
        upcasters: Upcasting | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"projection name {name!r} must be 1 to 200 of A-Z a-z 0-9 . _ -")
        self.name = name
        self.topic = topic
        self.category = category.removesuffix("*").removesuffix("-") if category else None
        self.store: ReadModelStore = store if store is not None else MemoryStore()
        self.upcasters = upcasters
        self._handlers: dict[str, Handler] = {}
        self._fallback: Handler | None = None
        self._init: Callable[[Any], None] | None = None
        self._module = sys._getframe(1).f_globals.get("__name__")  # for `code` (registry)

    @property
    def selection(self) -> Selection:
        return Selection(self.topic, category=self.category)

    @property
    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def code(self) -> str | None:
        """``package.module:attr`` naming this object, so tools can import it by name."""
        module = sys.modules.get(self._module or "")
        if module is None or self._module == "__main__":
            return None
        for attr, value in vars(module).items():
            if value is self:
                return f"{self._module}:{attr}"
        return None

    def on(self, *event_types: str) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(model, event)`` for these event types (``"*"``: every type
        without its own handler)."""
        if not event_types:
            raise ValueError("name at least one event type (or '*')")

        def register(handler: Handler) -> Handler:
            for event_type in event_types:
                if event_type == "*":
                    self._fallback = handler
                elif event_type in self._handlers:
                    raise ValueError(f"{self.name}: {event_type!r} already has a handler")
                else:
                    self._handlers[event_type] = handler
            return handler

        return register

    def init(self, hook: Callable[[Any], None]) -> Callable[[Any], None]:
        """Decorator: ``hook(model)`` runs once on a new, empty model (create tables here)."""
        self._init = hook
        return hook

    def initialize(self, model: Any) -> None:
        if self._init is not None:
            self._init(model)

    def apply(self, model: Any, event: Any) -> None:
        """Fold one event into ``model`` (upcast first; no handler: ignored)."""
        if self.upcasters is not None:
            event = upcast_stored(self.upcasters, event)
        handler = self._handlers.get(event.type, self._fallback)
        if handler is not None:
            handler(model, event)

    def fold(
        self,
        events: Sequence[Any],
        before: Position,
        after: Position,
        on_error: Callable[[Any, BaseException], None] | None = None,
        store: ReadModelStore | None = None,
    ) -> int:
        """Apply ``events`` and commit ``after`` as the checkpoint; returns events applied.

        On a handler error: a transactional store rolls back and commits the events before
        the failing one; then ``on_error(event, exc)`` is called and the fold goes on after
        it, or, without ``on_error``, :class:`ProjectionError` is raised with the checkpoint
        at the failing event.
        """
        store = store if store is not None else self.store
        position, start, applied = dict(before), 0, 0
        while True:
            index = start
            try:
                with store.transaction(after) as model:
                    apply = self.apply
                    for index in range(start, len(events)):
                        apply(model, events[index])
                    index = len(events)
                return applied + len(events) - start
            except Exception as exc:
                if index >= len(events):
                    raise  # the store failed, not a handler
                bad = events[index]
                done = events[start:index]
                skip = on_error is not None
                position = _advance(position, done)
                if skip:
                    position[bad.partition] = bad.offset + 1
                else:
                    position[bad.partition] = bad.offset
                with store.transaction(position) as model:
                    if store.transactional:  # rolled back: redo the good prefix
                        for event in done:
                            self.apply(model, event)
                applied += len(done)
                if on_error is None:
                    raise ProjectionError(
                        f"projection {self.name}: the handler for {bad.type!r} failed on "
                        f"{_where(bad)}: {type(exc).__name__}: {exc}", bad,
                    ) from exc
                on_error(bad, exc)
                start = index + 1

    def status(self) -> ProjectionStatus:
        """A status record with this projection's identity filled in."""
        return ProjectionStatus(self.name, self.topic, self.category,
                                store=self.store.describe(), code=self.code)


def upcast_stored(upcasters: Upcasting, event: Any) -> Any:
    """Upcast a :class:`StoredEvent` through an upcaster registry.

    Upcasters take and return the client's :class:`~moldau.eventstore.RecordedEvent` (they
    usually ``dataclasses.replace`` it), so a stored event is converted for them, and an
    upcast result is turned back into a StoredEvent: handlers see one type either way.
    """
    if not isinstance(event, StoredEvent):
        return upcasters.upcast(event)
    if not len(upcasters):
        return event
    recorded = RecordedEvent(event.stream, event.version, uuid.UUID(event.event_id), event.type,
                             event.type_version, event.data, event.metadata, event.timestamp_ms,
                             EventPosition(event.partition, event.offset))
    result = upcasters.upcast(recorded)
    if result is recorded:
        return event
    return event._replace(type=result.type, type_version=result.type_version, data=result.data,
                          metadata=result.metadata)


def _advance(position: Position, events: Sequence[Any]) -> Position:
    for event in events:
        position[event.partition] = event.offset + 1
    return position


def _where(event: Any) -> str:
    stream = getattr(event, "stream", None)
    at = f"{event.topic}[{event.partition}]@{event.offset}"
    return f"{stream} v{event.version} ({at})" if stream is not None else at


# ---------------------------------------------------------------------------- stores


class MemoryStore:
    """A dict in this process (``model``); read ``store.model`` each time, since a rebuild
    swaps in a new dict. Not transactional: a failing handler may leave half its changes."""

    transactional = False

    def __init__(self) -> None:
        self.model: dict[Any, Any] = {}
        self.position: Position | None = None
        self._projection: Projection | None = None

    def open(self, projection: Projection) -> None:
        if self._projection is None:
            self._projection = projection
            projection.initialize(self.model)

    def load_position(self) -> Position | None:
        return None if self.position is None else dict(self.position)

    @contextlib.contextmanager
    def transaction(self, position: Position) -> Iterator[dict[Any, Any]]:
        yield self.model
        self.position = dict(position)

    def reset(self) -> None:
        self.model, self.position = {}, None
        if self._projection is not None:
            self._projection.initialize(self.model)

    def fresh(self, *, resume: bool = False) -> MemoryStore:
        return MemoryStore()

    def swap_in(self, fresh: ReadModelStore) -> None:
        if not isinstance(fresh, MemoryStore):
            raise TypeError("a MemoryStore takes the model of another MemoryStore")
        self.model, self.position = fresh.model, fresh.position

    def describe(self) -> str:
        return "memory"

    def close(self) -> None:
        return None


_CHECKPOINT_TABLE = "_moldau_projection"


class SQLiteStore:
    """A SQLite file; the model is the ``sqlite3.Connection`` (handlers run SQL on it).

    Each transaction is ``BEGIN IMMEDIATE``, the handlers, the checkpoint row
    (``_moldau_projection``: name, position JSON, rows changed, updated_ms), ``COMMIT``.
    Handlers must not commit. A rebuild writes ``<file>.rebuild`` and renames it over the
    file; a runner using the old file notices (inode check before each batch) and reopens.
    One thread uses a store at a time; readers may open the file read-only whenever they like.
    """

    transactional = True

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.path = Path(path).absolute()
        self._name = name
        self._projection: Projection | None = None
        self._conn: sqlite3.Connection | None = None
        self._inode = 0

    @property
    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._conn

    def _key(self) -> str:
        if self._name is not None:
            return self._name
        return self._projection.name if self._projection is not None else "projection"

    def open(self, projection: Projection) -> None:
        self._projection = projection
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn, self._inode = conn, os.stat(self.path).st_ino
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                              (_CHECKPOINT_TABLE,)).fetchone()
        if exists is None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {_CHECKPOINT_TABLE} (name TEXT PRIMARY "
                             "KEY, position TEXT NOT NULL, changes INTEGER NOT NULL, "
                             "updated_ms INTEGER NOT NULL)")
                projection.initialize(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _reopen_if_swapped(self) -> None:
        """Pick up a file renamed over ours by a rebuild (cheap: one stat per batch)."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return
        if inode != self._inode and self._projection is not None:
            self.close()
            self.open(self._projection)

    def load_position(self) -> Position | None:
        self._reopen_if_swapped()
        row = self.connection.execute(
            f"SELECT position FROM {_CHECKPOINT_TABLE} WHERE name = ?", (self._key(),)
        ).fetchone()
        if row is None:
            return None
        return {int(p): int(o) for p, o in json.loads(row[0]).items()}

    @contextlib.contextmanager
    def transaction(self, position: Position) -> Iterator[sqlite3.Connection]:
        self._reopen_if_swapped()
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            yield conn
            if not conn.in_transaction:
                raise ProjectionError(
                    f"{self.describe()}: a handler committed or rolled back; leave "
                    "transactions to the store so the checkpoint commits with the changes",
                    None,
                )
            conn.execute(
                f"INSERT INTO {_CHECKPOINT_TABLE} VALUES (?, ?, ?, ?) ON CONFLICT(name) DO "
                "UPDATE SET position = excluded.position, changes = changes + excluded.changes, "
                "updated_ms = excluded.updated_ms",
                (self._key(), json.dumps({str(p): o for p, o in sorted(position.items())}),
                 conn.total_changes - before, int(time.time() * 1000)),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def reset(self) -> None:
        """Delete the file and start a new one (the init hook runs again)."""
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        if self._projection is not None:
            self.open(self._projection)

    def fresh(self, *, resume: bool = False) -> SQLiteStore:
        rebuild = SQLiteStore(f"{self.path}.rebuild", name=self._name)
        if not resume:
            for suffix in ("", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{rebuild.path}{suffix}")
        return rebuild

    def swap_in(self, fresh: ReadModelStore) -> None:
        """fsync the rebuilt file, rename it over ours, fsync the directory, reopen."""
        if not isinstance(fresh, SQLiteStore):
            raise TypeError("a SQLiteStore takes the file of another SQLiteStore")
        fresh.close()
        with open(fresh.path, "rb") as handle:
            os.fsync(handle.fileno())
        self.close()
        os.replace(fresh.path, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        if self._projection is not None:
            self.open(self._projection)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class CallbackStore:
    """The user's own model with callbacks for the checkpoint: at-least-once.

    Args:
        model: Passed to every handler (a database client, a cache ...).
        load_position: Returns the saved position (``{partition: next_offset}``) or None.
        save_position: Called with the new position after each batch's handlers ran. A crash
            between the two applies the batch again on restart, so handlers must be
            idempotent (upserts keyed by stream and version, for example).
        reset: Optional: empties the model (for ``moldau projections reset`` and rebuilds).
        description: Shown in ``moldau projections status``.
    """

    transactional = False

    def __init__(
        self,
        model: Any,
        load_position: Callable[[], Position | None],
        save_position: Callable[[Position], None],
        *,
        reset: Callable[[], None] | None = None,
        description: str = "callback",
    ) -> None:
        self.model = model
        self._load, self._save, self._reset = load_position, save_position, reset
        self._description = description

    def open(self, projection: Projection) -> None:
        return None

    def load_position(self) -> Position | None:
        return self._load()

    @contextlib.contextmanager
    def transaction(self, position: Position) -> Iterator[Any]:
        yield self.model
        self._save(dict(position))

    def reset(self) -> None:
        if self._reset is None:
            raise ProjectionError(f"{self._description}: this store has no reset callback",
                                  None)
        self._reset()
        self._save({})

    def fresh(self, *, resume: bool = False) -> CallbackStore:
        """The same store, reset: a callback model cannot be built on the side."""
        if not resume:
            self.reset()
        return self

    def swap_in(self, fresh: ReadModelStore) -> None:
        return None

    def describe(self) -> str:
        return f"callback:{self._description}"

    def close(self) -> None:
        return None


# the runners use the classes above; imported last so either module may be imported first
from moldau._replay_runner import AsyncProjectionRunner, ProjectionRunner  # noqa: E402

__all__ += ["AsyncProjectionRunner", "ProjectionRunner"]
