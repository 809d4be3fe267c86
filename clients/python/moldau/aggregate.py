"""An event-sourced aggregate base class and a minimal command bus.

::

    class Order(Aggregate):
        category = "order"

        def __init__(self, aggregate_id: str) -> None:
            super().__init__(aggregate_id)
            self.lines: list[str] = []
            self.paid = False

        def place(self, sku: str) -> None:          # a command method: check, then record
            if self.paid:
                raise ValueError("order is paid")
            self.record("LinePlaced", {"sku": sku})

        @applies("LinePlaced")                     # how an event changes the state
        def _line_placed(self, data: dict) -> None:
            self.lines.append(data["sku"])

    order = Order.load(store, "42")               # latest snapshot + the events after it
    order.place("book")
    order.save(store)                             # expected version = the loaded version

An aggregate's stream is ``<category>-<id>``. Events are JSON (``EventData.json``); state
changes only in ``@applies`` handlers, which :meth:`Aggregate.record` calls for new events and
:meth:`Aggregate.load` for stored ones, so replaying history rebuilds exactly the state that
was saved. :meth:`Aggregate.save` appends the pending events with the version the aggregate
was loaded at as expected version: a concurrent writer makes it fail with
``WrongExpectedVersionError`` instead of silently interleaving. :class:`CommandBus` retries
such a command on a freshly loaded aggregate.

Snapshots: :meth:`Aggregate.snapshot_state` / :meth:`Aggregate.restore_snapshot` default to the
public attributes as JSON; override both for other state. ``save(snapshot_every=n)`` saves one
whenever the version crosses a multiple of ``n``.

Concurrency: an aggregate object belongs to one command at a time (not thread-safe).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from moldau._eventstore_types import NO_STREAM, AppendResult, EventData, RecordedEvent
from moldau.errors import StreamNotFoundError, WrongExpectedVersionError
from moldau.eventstore import AsyncEventStore, EventStore

__all__ = ["Aggregate", "CommandBus", "applies"]

_A = TypeVar("_A", bound="Aggregate")
_C = TypeVar("_C")
Handler = Callable[[Any, Any], None]


def applies(event_type: str) -> Callable[[Handler], Handler]:
    """Mark a method ``(self, data)`` as the handler of ``event_type`` events."""

    def mark(method: Handler) -> Handler:
        setattr(method, "_moldau_applies", event_type)  # noqa: B010  (read by __init_subclass__)
        return method

    return mark


class Aggregate:
    """Base of event-sourced aggregates (see the module docstring).

    Attributes:
        id: The aggregate's id; its stream is ``<category>-<id>``.
        version: The version of the last event applied from the store (-1: none); pending
            events are not counted until saved.
    """

    category: ClassVar[str] = ""
    _handlers: ClassVar[dict[str, Handler]] = {}
    _internal: ClassVar[frozenset[str]] = frozenset({"id", "version"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers = dict(cls._handlers)
        for value in vars(cls).values():
            event_type = getattr(value, "_moldau_applies", None)
            if event_type is not None:
                handlers[event_type] = value
        cls._handlers = handlers

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = -1
        self._pending: list[EventData] = []

    @property
    def stream(self) -> str:
        if not self.category:
            raise TypeError(f"{type(self).__name__} needs a class attribute `category`")
        return f"{self.category}-{self.id}"

    @property
    def pending_events(self) -> list[EventData]:
        """Events recorded since the last save, oldest first."""
        return list(self._pending)

    def record(self, event_type: str, data: Any, *, metadata: Any = None) -> None:
        """Apply a new event to the state and keep it for :meth:`save`."""
        event = EventData.json(event_type, data, metadata=metadata)
        self._dispatch(event_type, json.loads(event.data))
        self._pending.append(event)

    def apply(self, event: RecordedEvent) -> None:
        """Apply one stored event (used by :meth:`load`; events of unknown types are skipped,
        so an aggregate may ignore events it does not need)."""
        if event.version <= self.version:
            raise ValueError(f"event {event.version} of {event.stream} is not after "
                             f"version {self.version}")
        if event.type in self._handlers:
            self._dispatch(event.type, event.json())
        self.version = event.version

    def _dispatch(self, event_type: str, data: Any) -> None:
        handler = self._handlers.get(event_type)
        if handler is None:
            raise TypeError(f"{type(self).__name__} has no @applies({event_type!r}) handler")
        handler(self, data)

    # ------------------------------------------------------------------ snapshots

    def snapshot_state(self) -> Any:
        """The state as a JSON value (default: the public attributes but ``id``/``version``)."""
        return {name: value for name, value in vars(self).items()
                if not name.startswith("_") and name not in self._internal}

    def restore_snapshot(self, state: Any) -> None:
        """Set the state from :meth:`snapshot_state`'s value."""
        for name, value in state.items():
            setattr(self, name, value)

    def _restore(self, version: int, state: bytes) -> None:
        self.restore_snapshot(json.loads(state))
        self.version = version

    def _saved(self, result: AppendResult | None) -> bool:
        """Bookkeeping after an append; True when a snapshot is due (see save)."""
        self._pending.clear()
        if result is not None:
            self.version = result.last_version
        return result is not None

    # ------------------------------------------------------------------ store, blocking

    @classmethod
    def load(cls: type[_A], store: EventStore, aggregate_id: str, *,
             topic: str | None = None, use_snapshot: bool = True) -> _A:
        """The aggregate from its latest snapshot plus the events after it (a new one when
        the stream does not exist)."""
        aggregate = cls(aggregate_id)
        snapshot = store.load_snapshot(aggregate.stream, topic=topic) if use_snapshot else None
        if snapshot is not None:
            aggregate._restore(snapshot.version, snapshot.state)
        try:
            events = store.read_stream(aggregate.stream, aggregate.version + 1, topic=topic)
        except StreamNotFoundError:
            return aggregate
        for event in events:
            aggregate.apply(event)
        return aggregate

    def save(self, store: EventStore, *, topic: str | None = None,
             snapshot_every: int | None = None) -> AppendResult | None:
        """Append the pending events, expecting the stream at :attr:`version`; None if there
        were none.

        Raises:
            WrongExpectedVersionError: someone else appended since this aggregate was loaded
                (load it again and redo the command).
        """
        if not self._pending:
            return None
        before = self.version
        expected = before if before >= 0 else NO_STREAM
        result = store.append_to_stream(self.stream, expected, self._pending, topic=topic)
        if self._saved(result) and _crossed(before, self.version, snapshot_every):
            store.save_snapshot(self.stream, self.version,
                                json.dumps(self.snapshot_state()).encode(), topic=topic)
        return result

    # ------------------------------------------------------------------ store, asyncio

    @classmethod
    async def load_async(cls: type[_A], store: AsyncEventStore, aggregate_id: str, *,
                         topic: str | None = None, use_snapshot: bool = True) -> _A:
        """:meth:`load` with an :class:`AsyncEventStore`."""
        aggregate = cls(aggregate_id)
        snapshot = (await store.load_snapshot(aggregate.stream, topic=topic)
                    if use_snapshot else None)
        if snapshot is not None:
            aggregate._restore(snapshot.version, snapshot.state)
        try:
            events = await store.read_stream(aggregate.stream, aggregate.version + 1,
                                             topic=topic)
        except StreamNotFoundError:
            return aggregate
        for event in events:
            aggregate.apply(event)
        return aggregate

    async def save_async(self, store: AsyncEventStore, *, topic: str | None = None,
                         snapshot_every: int | None = None) -> AppendResult | None:
        """:meth:`save` with an :class:`AsyncEventStore`."""
        if not self._pending:
            return None
        before = self.version
        expected = before if before >= 0 else NO_STREAM
        result = await store.append_to_stream(self.stream, expected, self._pending, topic=topic)
        if self._saved(result) and _crossed(before, self.version, snapshot_every):
            await store.save_snapshot(self.stream, self.version,
                                      json.dumps(self.snapshot_state()).encode(), topic=topic)
        return result


def _crossed(before: int, after: int, every: int | None) -> bool:
    """True when a multiple of ``every`` lies in ``(before, after]``."""
    if not every or every < 1:
        return False
    return (after + 1) // every > (before + 1) // every


@dataclass(frozen=True, slots=True)
class _Route(Generic[_A, _C]):
    aggregate: type[_A]
    id_of: Callable[[_C], str]
    handle: Callable[[_A, _C], None]


class CommandBus:
    """Routes a command to its aggregate: load, run the handler, save; on a concurrent write
    (WrongExpectedVersionError) reload and run it again, up to ``retries`` more times.

    ::

        bus = CommandBus(store)

        @bus.handler(PlaceOrder, Order, id_of=lambda command: command.order_id)
        def place(order: Order, command: PlaceOrder) -> None:
            order.place(command.sku)

        bus.dispatch(PlaceOrder("42", "book"))

    Handlers must be deterministic given the aggregate and the command, since a retry runs
    them again on newer state.
    """

    def __init__(self, store: EventStore, *, topic: str | None = None, retries: int = 3,
                 snapshot_every: int | None = None) -> None:
        self._store = store
        self._topic = topic
        self._retries = retries
        self._snapshot_every = snapshot_every
        self._routes: dict[type, _Route[Any, Any]] = {}

    def register(self, command_type: type[_C], aggregate: type[_A],
                 handle: Callable[[_A, _C], None], *, id_of: Callable[[_C], str]) -> None:
        if command_type in self._routes:
            raise ValueError(f"{command_type.__name__} already has a handler")
        self._routes[command_type] = _Route(aggregate, id_of, handle)

    def handler(self, command_type: type[_C], aggregate: type[_A], *,
                id_of: Callable[[_C], str]) -> Callable[[Callable[[_A, _C], None]],
                                                        Callable[[_A, _C], None]]:
        """Decorator form of :meth:`register`."""

        def decorate(handle: Callable[[_A, _C], None]) -> Callable[[_A, _C], None]:
            self.register(command_type, aggregate, handle, id_of=id_of)
            return handle

        return decorate

    def dispatch(self, command: object) -> AppendResult | None:
        """Run ``command``; the append's result (None if the handler recorded nothing).

        Raises:
            KeyError: no handler for the command's type.
            WrongExpectedVersionError: still conflicting after ``retries`` reloads.
        """
        route = self._routes.get(type(command))
        if route is None:
            raise KeyError(f"no handler for {type(command).__name__}")
        attempt = 0
        while True:
            aggregate: Aggregate = route.aggregate.load(self._store, route.id_of(command),
                                                        topic=self._topic)
            route.handle(aggregate, command)
            try:
                result: AppendResult | None = aggregate.save(
                    self._store, topic=self._topic, snapshot_every=self._snapshot_every)
                return result
            except WrongExpectedVersionError:
                if attempt >= self._retries:
                    raise
                attempt += 1
