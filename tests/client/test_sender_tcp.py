"""The producer's TCP send path (Sender._write_drained), without a broker."""

from __future__ import annotations

import time
from typing import Any

import grpc

from engine.records import Codec
from moldau._accumulator import Accumulator
from moldau._sender import Sender
from moldau._tcp import TcpRpcError


class BreaksOnSecondWrite:
    """A stream whose connection breaks while the second batch of a drain is written."""

    def __init__(self) -> None:
        self.written: list[int] = []

    def write_now(self, request: Any) -> None:
        if len(self.written) == 1:
            raise TcpRpcError(grpc.StatusCode.UNAVAILABLE, "connection lost")
        self.written.append(request.correlation_id)

    def cancel(self) -> bool:
        return True


def test_a_connection_breaking_mid_drain_puts_the_unwritten_batches_back() -> None:
    accumulator = Accumulator(batch_size=1 << 20, linger_ms=0, buffer_memory=1 << 20,
                              max_in_flight=5, idempotent=True)
    sender = Sender("127.0.0.1:1", accumulator, codec=Codec.NONE, producer_id=7,
                    request_timeout_s=1, delivery_timeout_s=60, retry_backoff_s=0.1,
                    tcp_address="127.0.0.1:2")
    for i in range(4):
        accumulator.try_append_bulk("t", 0, [b"v%d" % i], None, 20, 0)
    stream = BreaksOnSecondWrite()
    sender._call = stream
    sender._write_drained(stream)  # type: ignore[arg-type]
    # written, and the one whose write failed: the stream's failure requeues both later
    assert [b.order for b in sender._in_flight.values()] == [0, 1]
    # the two never written are ready again, in order, behind nothing else
    again = accumulator.drain(time.monotonic())
    assert [b.order for b in again] == [2, 3]
    # and once the failure is handled, all four go out again in log order
    sender._stream_failed(stream, TcpRpcError(grpc.StatusCode.UNAVAILABLE, "lost"))
    accumulator.requeue(again)
    assert [b.order for b in accumulator.drain(time.monotonic())] == [0, 1, 2, 3]
