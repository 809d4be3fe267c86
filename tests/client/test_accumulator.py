"""The producer's batching and idempotence rules, without a broker."""

from __future__ import annotations

from engine.records import Codec, NewRecord, validate_produce_batch
from moldau._accumulator import Accumulator, PendingBatch


def make(max_in_flight: int = 5, batch_size: int = 100) -> Accumulator:
    return Accumulator(batch_size=batch_size, linger_ms=0, buffer_memory=10_000,
                       max_in_flight=max_in_flight, idempotent=True)


def add_batch(acc: Accumulator, tag: bytes) -> PendingBatch:
    appended = acc.try_append("t", 0, NewRecord(tag * 60, timestamp=1), 100)
    assert appended is not None
    return appended[0]


def test_batches_close_at_batch_size_and_get_consecutive_sequences() -> None:
    acc = make()
    batches = [add_batch(acc, bytes([65 + i])) for i in range(3)]
    drained = acc.drain(now=1e12)
    assert drained == batches
    assert [(b.epoch, b.base_sequence) for b in drained] == [(0, 0), (0, 1), (0, 2)]


def test_at_most_max_in_flight_per_partition() -> None:
    acc = make(max_in_flight=2)
    for i in range(4):
        add_batch(acc, bytes([65 + i]))
    assert len(acc.drain(now=1e12)) == 2
    assert acc.drain(now=1e12) == []


def test_memory_is_released_on_acknowledgement() -> None:
    acc = Accumulator(batch_size=100, linger_ms=0, buffer_memory=150, max_in_flight=5,
                      idempotent=True)
    first = add_batch(acc, b"a")
    assert acc.try_append("t", 0, NewRecord(b"b"), 100) is None  # full
    (sent,) = acc.drain(now=1e12)
    acc.acknowledged(sent)
    assert sent is first
    assert acc.try_append("t", 0, NewRecord(b"b"), 100) is not None


def test_lost_batches_are_resent_unchanged_in_order() -> None:
    acc = make()
    batches = [add_batch(acc, bytes([65 + i])) for i in range(3)]
    sent = acc.drain(now=1e12)
    encoded = [b.encode(Codec.NONE, 7) for b in sent]
    acc.requeue(list(reversed(sent)))  # connection lost: outcome unknown
    again = acc.drain(now=1e12)
    assert again == batches
    assert [b.encode(Codec.NONE, 7) for b in again] == encoded


def test_failure_bumps_epoch_and_rejected_successors_are_resequenced() -> None:
    acc = make()
    first, second, third = (add_batch(acc, bytes([65 + i])) for i in range(3))
    acc.drain(now=1e12)
    second.encode(Codec.NONE, 7)
    acc.failed(first)  # e.g. too large: not stored, so the others have a gap
    assert acc.out_of_order(second)  # stale epoch: requeued for re-sequencing
    fourth = add_batch(acc, b"D")
    assert acc.drain(now=1e12) == []  # `third` (old epoch) is still in flight: wait
    assert acc.out_of_order(third)
    resent = acc.drain(now=1e12)
    assert resent == [second, third, fourth]
    assert [(b.epoch, b.base_sequence) for b in resent] == [(1, 0), (1, 1), (1, 2)]
    header = validate_produce_batch(second.encode(Codec.NONE, 7))  # CRC recomputed
    assert (header.producer_epoch, header.base_sequence) == (1, 0)


def test_out_of_order_behind_an_unstored_batch_waits_for_it() -> None:
    acc = make()
    first, second = add_batch(acc, b"A"), add_batch(acc, b"B")
    acc.drain(now=1e12)
    acc.requeue([first])  # first came back UNAVAILABLE
    assert acc.out_of_order(second)  # so second's gap is expected: resend it after first
    assert [(b.epoch, b.base_sequence) for b in acc.drain(now=1e12)] == [(0, 0), (0, 1)]
    lone = add_batch(acc, b"C")
    acc.drain(now=1e12)
    acc.acknowledged(first)
    acc.acknowledged(second)
    assert not acc.out_of_order(lone)  # nothing before it: a real gap, the caller fails it
