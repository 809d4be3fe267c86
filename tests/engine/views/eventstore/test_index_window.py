"""The stream index's event-id window: it remembers at least the last ``window`` events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.views.eventstore.index import PartitionIndex, StreamState

# an append's size, or 0 for a single ``remember`` (one event at a time, as a rebuild does)
_appends = st.lists(st.integers(0, 40), max_size=60)


@given(window=st.integers(0, 120), sizes=_appends)
def test_the_window_keeps_the_last_events_and_little_more(window: int,
                                                          sizes: list[int]) -> None:
    index = PartitionIndex(window)
    remembered: list[tuple[bytes, tuple[bytes, int]]] = []
    for number, size in enumerate(sizes):
        key = b"s%d" % number
        if size == 0:
            event_id = b"id-%d" % len(remembered)
            index.remember(event_id, key, 7)
            remembered.append((event_id, (key, 7)))
            continue
        ids = [b"id-%d" % (len(remembered) + n) for n in range(size)]
        index.remember_many(ids, key, 3)
        remembered += [(event_id, (key, 3 + n)) for n, event_id in enumerate(ids)]
    if window == 0:
        assert index.ids == {}
        return
    recent = remembered[-window:]
    assert all(index.ids.get(event_id) == where for event_id, where in recent)
    largest = max([*sizes, 1024 if 0 in sizes else 1])
    assert len(index.ids) < window + largest
    assert set(index.ids) <= {event_id for event_id, _ in remembered}


def test_a_rollback_drops_unacknowledged_ids_and_the_window_goes_on() -> None:
    index = PartitionIndex(4)
    index.streams[b"s"] = state = StreamState()
    state.add_events(0, 0, 3)
    index.remember_many([b"a", b"b", b"c"], b"s", 0)
    index.rollback(2)  # offset 2 (version 2, id c) was never durable
    assert set(index.ids) == {b"a", b"b"}
    index.remember_many([b"d", b"e", b"f"], b"s", 2)
    index.remember_many([b"g"], b"s", 5)
    assert {b"d", b"e", b"f", b"g"} <= set(index.ids)
    assert len(index.ids) <= 6
