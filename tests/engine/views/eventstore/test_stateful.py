"""A hypothesis state machine: the store against a plain in-memory model of streams."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import StreamNotFoundError, WrongExpectedVersionError
from engine.views.eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventData,
    EventStore,
    EventStoreSettings,
)

STREAMS = st.sampled_from(["order-1", "order-2", "user-1"])


class _Model:
    def __init__(self) -> None:
        self.events: dict[str, list[bytes]] = {}  # every version ever, data per version
        self.deleted: set[str] = set()
        self.truncate: dict[str, int] = {}

    def current(self, stream: str) -> int:
        if stream in self.deleted or not self.events.get(stream):
            return -1
        return len(self.events[stream]) - 1


class EventStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp())
        self.clock = ManualClock()
        self.broker = Broker.open(self.directory, background=False, clock=self.clock)
        self.store = EventStore.open(self.broker, clock=self.clock,
                                     settings=EventStoreSettings(read_bytes=1024))
        self.store.create_store_topic("t", 2)
        self.model = _Model()
        self.counter = 0

    def _matches(self, expected: int, current: int) -> bool:
        return {ANY: True, NO_STREAM: current == -1, STREAM_EXISTS: current >= 0}.get(
            expected, expected == current
        )

    @rule(stream=STREAMS, count=st.integers(1, 3),
          expected=st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS, 0, 1, 2, 3, 5]))
    def append(self, stream: str, count: int, expected: int) -> None:
        data = [b"%d" % (self.counter + n) for n in range(count)]
        self.counter += count
        events = [EventData("E", d, event_id=uuid.uuid4()) for d in data]
        current = self.model.current(stream)
        if self._matches(expected, current):
            result = self.store.append_to_stream("t", stream, expected, events)
            history = self.model.events.setdefault(stream, [])
            assert result.first_version == len(history)
            history.extend(data)
            self.model.deleted.discard(stream)
        else:
            with pytest.raises(WrongExpectedVersionError) as info:
                self.store.append_to_stream("t", stream, expected, events)
            assert info.value.current == current

    @rule(stream=STREAMS)
    def delete(self, stream: str) -> None:
        if self.model.current(stream) < 0:
            return
        self.store.delete_stream("t", stream)
        self.model.deleted.add(stream)
        self.model.truncate[stream] = len(self.model.events[stream])

    @rule(stream=STREAMS, before=st.integers(0, 4))
    def truncate(self, stream: str, before: int) -> None:
        current = self.model.current(stream)
        if current < 0 or before > current + 1:
            return
        self.store.truncate_stream("t", stream, before)
        self.model.truncate[stream] = max(self.model.truncate.get(stream, 0), before)

    @precondition(lambda self: self.counter > 0)
    @rule()
    def restart(self) -> None:
        self.store.close()
        self.broker.close()
        self.broker = Broker.open(self.directory, background=False, clock=self.clock)
        self.store = EventStore.open(self.broker, clock=self.clock,
                                     settings=EventStoreSettings(read_bytes=1024))

    @invariant()
    def streams_match(self) -> None:
        for stream in ("order-1", "order-2", "user-1"):
            current = self.model.current(stream)
            assert self.store.stream_version("t", stream) == current
            if current < 0:
                try:
                    self.store.read_stream("t", stream)
                except StreamNotFoundError:
                    continue
                raise AssertionError(f"{stream} should not be found")
            first = self.model.truncate.get(stream, 0)
            events = self.store.read_stream("t", stream).events
            assert [e.data for e in events] == self.model.events[stream][first:]
            assert [e.version for e in events] == list(range(first, current + 1))

    def teardown(self) -> None:
        self.broker.close()
        shutil.rmtree(self.directory, ignore_errors=True)


EventStoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25,
                                               deadline=None)
TestEventStoreMachine = EventStoreMachine.TestCase
