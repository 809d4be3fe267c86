"""Fixtures for the event-store tests: a real broker on tmp_path and a store on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.views.eventstore import EventData, EventStore, EventStoreSettings

T0 = 1_700_000_000_000


def ev(n: int, event_type: str = "Happened", **kwargs: object) -> EventData:
    """An event whose data names ``n``; a deterministic id so tests can resend it."""
    event_id = kwargs.pop("event_id", uuid.UUID(int=n + 1))
    return EventData(event_type, b'{"n": %d}' % n, event_id=event_id, **kwargs)  # type: ignore[arg-type]


def evs(start: int, count: int, **kwargs: object) -> list[EventData]:
    return [ev(n, **kwargs) for n in range(start, start + count)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=T0)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def broker(data_dir: Path, clock: ManualClock) -> Iterator[Broker]:
    broker = Broker.open(data_dir, background=False, clock=clock)
    yield broker
    broker.close()


@pytest.fixture
def store(broker: Broker, clock: ManualClock) -> EventStore:
    store = EventStore.open(broker, clock=clock, settings=EventStoreSettings(read_bytes=4096))
    store.create_store_topic("orders", 1)
    store.create_store_topic("multi", 3)
    return store
