"""The TCP port's frame parsers, broker and client side, under arbitrary chunking and bytes."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_api.tcp_port import MAGIC, _Connection
from moldau import _tcp
from moldau.v1 import tcp_pb2

HEAD = struct.Struct(">IIB")
frames_strategy = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 4), st.binary(max_size=300)),
    max_size=12,
)


def encode(frames: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(HEAD.pack(len(p) + 5, c, k) + p for c, k, p in frames)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False
        self.paused = False

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakePort:
    def __init__(self) -> None:
        self.max_frame = 1024 + 5
        self.connections: set[Any] = set()


MAX_PAYLOAD = FakePort().max_frame - 5


def broker_connection() -> tuple[_Connection, list[tuple[int, int, bytes]], FakeTransport]:
    connection = _Connection(FakePort())  # type: ignore[arg-type]
    seen: list[tuple[int, int, bytes]] = []
    transport = FakeTransport()
    connection._transport = transport  # type: ignore[assignment]
    connection._frame = lambda c, k, p: seen.append((c, k, p))  # type: ignore[method-assign]
    return connection, seen, transport


@settings(max_examples=300)
@given(frames_strategy, st.lists(st.integers(0, 10_000), max_size=20))
def test_the_broker_reads_frames_whatever_the_chunks(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    connection, seen, transport = broker_connection()
    for piece in chunked(MAGIC + encode(frames), cuts):
        connection.data_received(piece)
    assert seen == frames
    assert not transport.aborted


@settings(max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=8))
def test_arbitrary_bytes_never_raise_in_the_broker_reader(data: bytes, cuts: list[int]) -> None:
    connection, seen, transport = broker_connection()
    for piece in chunked(MAGIC + data, cuts):
        connection.data_received(piece)
        if connection.closed:
            break
    # whatever was accepted is a frame within the limit; a bad length drops the connection
    assert all(len(p) <= MAX_PAYLOAD for _, _, p in seen)
    assert transport.aborted == connection.closed


def test_a_bad_greeting_or_an_oversized_frame_drops_the_connection() -> None:
    connection, seen, transport = broker_connection()
    connection.data_received(b"GET / HTTP/1.1\r\n")
    assert transport.aborted
    assert seen == []
    connection, seen, transport = broker_connection()
    connection.data_received(MAGIC + HEAD.pack(MAX_PAYLOAD + 6, 1, 1))
    assert transport.aborted
    assert seen == []


class FakeCall:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.ended: list[object] = []

    def deliver(self, payload: bytes) -> None:
        self.messages.append(payload)

    def finish(self, error: object) -> None:
        self.ended.append(error)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(0, 16),
       st.lists(st.integers(0, 10_000), max_size=20))
def test_the_client_reads_pushes_and_the_status_whatever_the_chunks(
    messages: list[bytes], code: int, cuts: list[int]
) -> None:
    status = tcp_pb2.TcpStatus(code=code, message="why")
    status.metadata.add(key="moldau-error", value="SomeError")
    data = encode([(7, 1, m) for m in messages] + [(9, 1, b"for a forgotten call")]
                  + [(7, 3, status.SerializeToString())])

    async def run() -> FakeCall:
        link = _tcp._Link(object())  # type: ignore[arg-type]
        call = FakeCall()
        link.calls[7] = call  # type: ignore[assignment]
        for piece in chunked(data, cuts):
            link.data_received(piece)
        assert 7 not in link.calls  # the status ended it
        return call

    call = asyncio.run(run())
    assert call.messages == messages
    (ended,) = call.ended
    if code == 0:
        assert ended is None
    else:
        assert isinstance(ended, _tcp.TcpRpcError)
        assert ended.code().value[0] == code
        assert ended.details() == "why"
        assert ended.trailing_metadata() == (("moldau-error", "SomeError"),)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_in_the_client_reader(data: bytes) -> None:
    async def run() -> None:
        link = _tcp._Link(object())  # type: ignore[arg-type]
        link.calls[0] = FakeCall()  # type: ignore[assignment]
        link.data_received(data)  # garbage fails the connection, it never raises

    asyncio.run(run())


def test_a_push_the_listener_cannot_handle_ends_the_call_with_internal() -> None:
    """A response that does not parse (or a listener bug) ends the call with INTERNAL, which
    the fetcher retries, instead of escaping into the event loop."""

    class NeverConnects:
        address = "nowhere"
        metadata = ()

        async def link(self) -> None:
            await asyncio.Event().wait()  # this test feeds the frames by hand

    async def run() -> _tcp.TcpRpcError:
        call = _tcp.TcpCall(NeverConnects(), "/m", bytes,  # type: ignore[arg-type]
                            lambda data: data.decode("ascii"), None)
        got: list[str] = []
        listening = asyncio.ensure_future(call.listen(got.append))
        await asyncio.sleep(0)
        call.deliver(b"fine")
        call.deliver(b"\xff not ascii")
        try:
            await listening
        except _tcp.TcpRpcError as exc:
            assert got == ["fine"]
            return exc
        raise AssertionError("the call should have failed")

    error = asyncio.run(run())
    assert error.code().name == "INTERNAL"
    assert "cannot handle a response" in error.details()


def test_a_call_cancelled_while_its_open_waits_for_the_socket_is_cancelled_after_it() -> None:
    """The OPEN frame waited on a backed-up socket when the call was cancelled: the CANCEL
    must follow it, or the broker would keep a call (a subscription, say) nobody reads."""

    class BackedUpLink:
        def __init__(self) -> None:
            self.calls: dict[int, Any] = {}
            self.frames: list[int] = []
            self.drained = asyncio.Event()
            self.transport = self

        def is_closing(self) -> bool:
            return False

        async def send(self, call_id: int, kind: int, payload: bytes = b"") -> None:
            await self.drained.wait()
            self.frames.append(kind)

        def write(self, data: bytes) -> None:
            self.frames.append(HEAD.unpack_from(data)[2])

    link = BackedUpLink()

    class Channel:
        address = "test"
        metadata = ()

        async def link(self) -> BackedUpLink:
            return link

        def next_call_id(self) -> int:
            return 5

    async def run() -> None:
        call = _tcp.TcpCall(Channel(), "/m", bytes, bytes, None)  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)  # _open is now waiting in send(OPEN)
        assert call.cancel()
        assert link.frames == []  # nothing may overtake the OPEN
        link.drained.set()
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert link.frames == [0, 4]  # OPEN, then CANCEL
    assert link.calls == {}


def test_the_client_link_backlogs_what_the_socket_does_not_take_and_flushes_it_in_order(
) -> None:
    """Writes from another thread into a socket nobody reads: the rest waits in the backlog,
    the link reports itself backed up, and once the peer reads, every byte arrives in the
    order written."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    chunks = [bytes([i % 251]) * 50_000 for i in range(20)]  # 1 MB, far over the buffers

    class Channel:
        address = "pair"

        def link_lost(self, _link: object) -> None:
            pass

    async def run() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(
            lambda: _tcp._Link(Channel()), sock=ours)  # type: ignore[arg-type]
        assert link.writes_anywhere
        writer = threading.Thread(target=lambda: [link.write(c) for c in chunks])
        await asyncio.to_thread(lambda: (writer.start(), writer.join()))
        backed_up = not link.writable
        received = bytearray()

        def drain() -> None:
            total = len(_tcp.MAGIC) + sum(map(len, chunks))
            while len(received) < total:
                received.extend(peer.recv(65536))

        await asyncio.to_thread(drain)
        await asyncio.wait_for(link.wait_writable(), 5)
        assert bytes(received) == _tcp.MAGIC + b"".join(chunks)
        flushed = link.writable
        link.transport.close()
        await asyncio.sleep(0.01)
        return backed_up, flushed

    backed_up, flushed = asyncio.run(run())
    peer.close()
    assert backed_up  # the backlog path was taken
    assert flushed
