"""A loopback TCP fault proxy: lose or delay the broker's responses (RELIABILITY-PLAN T13).

Modelled on the Kafka protocol proxies used in fault testing, but protocol-blind: it moves
bytes. Each connection a client opens to :attr:`FaultProxy.address` gets its own connection
to the upstream broker. Client-to-server bytes are forwarded as they arrive; server-to-client
bytes go through the proxy's current :data:`Fault`, which a test may change at any time:

- :class:`Forward`: passed on at once;
- :class:`Delay`: each chunk is held for a random ``min_s``..``max_s``, order kept (a chunk
  never overtakes an earlier one, so a short delay after a long one waits for it);
- :class:`Cut`: the connection gets a budget of ``min_bytes``..``max_bytes`` response bytes
  (drawn when it first carries a response under this fault). When a chunk crosses it, the
  part within the budget is forwarded, the rest dropped, and both sockets are aborted. The
  broker wrote those dropped bytes, so it had already processed the requests they answer:
  the client sees a lost response after a commit, and must retry without duplicating.

The proxy runs its own asyncio loop on a daemon thread; :class:`ProxyStats` counts what it
did. Thread-safety: :meth:`FaultProxy.set_fault` may be called from any thread (a reference
swap); everything else happens on the proxy's loop.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Cut", "Delay", "Fault", "FaultProxy", "Forward", "ProxyStats"]

_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass responses on unchanged."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Hold each response chunk for a uniform-random time in ``[min_s, max_s]``."""

    min_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class Cut:
    """Abort each connection after a uniform-random ``[min_bytes, max_bytes]`` of responses."""

    min_bytes: int
    max_bytes: int


Fault = Forward | Delay | Cut


@dataclass(slots=True)
class ProxyStats:
    """What the proxy did; read it once the traffic has stopped."""

    connections: int = 0
    cuts: int = 0
    #: Cuts that dropped response bytes the broker had already written.
    cuts_dropping_responses: int = 0
    dropped_bytes: int = 0
    forwarded_bytes: int = 0
    delayed_chunks: int = 0
    delays_s: list[float] = field(default_factory=list)


_CLOSE = "close"  # after the queued bytes, close the client side (the server closed)
_CUT = "cut"  # after the queued bytes, abort both sides


class _Connection:
    """One proxied connection: a client socket, its upstream socket, the response queue."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.responses: asyncio.Queue[tuple[float, bytes, str]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.forwarded = 0  # response bytes accepted for delivery
        self.budget: int | None = None  # response bytes allowed before the cut
        self.last_release = 0.0

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        self.closed.set()


class FaultProxy:
    """Listen on a free loopback port and forward to ``upstream`` (``host:port``).

    Args:
        upstream: The broker's address.
        rng: The source of cut budgets and delays (seed it for a reproducible mix).
        fault: The initial fault; :class:`Forward` by default.
    """

    def __init__(self, upstream: str, rng: random.Random, fault: Fault | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host.strip("[]"), int(port))
        self._rng = rng
        self._fault: Fault = fault or Forward()
        self.stats = ProxyStats()
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()

    # ------------------------------------------------------------------ control

    def start(self) -> str:
        """Bind, start forwarding, and return the proxy's ``host:port``."""
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.address = f"127.0.0.1:{port}"
        return self.address

    def set_fault(self, fault: Fault) -> None:
        """Apply ``fault`` to every response chunk read from now on."""
        self._fault = fault

    def close(self) -> None:
        """Stop listening, abort every connection, stop the loop."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for connection in list(self._live):
            connection.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        connection = _Connection(writer, up_writer)
        self._live.add(connection)
        self.stats.connections += 1
        tasks = [
            asyncio.create_task(self._requests(reader, connection)),
            asyncio.create_task(self._responses(up_reader, connection)),
            asyncio.create_task(self._deliver(connection)),
        ]
        try:
            await connection.closed.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            connection.abort()
            self._live.discard(connection)

    async def _requests(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        """Client to server, unchanged; the client going away ends the connection."""
        try:
            while data := await reader.read(_CHUNK_BYTES):
                connection.upstream.write(data)
                await connection.upstream.drain()
        except OSError:
            pass
        connection.abort()

    async def _responses(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        """Server to client: queue each chunk for delivery under the current fault."""
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK_BYTES):
                fault = self._fault
                release = max(connection.last_release, loop.time())
                if isinstance(fault, Delay):
                    delay = self._rng.uniform(fault.min_s, fault.max_s)
                    release = max(connection.last_release, loop.time() + delay)
                    self.stats.delayed_chunks += 1
                    self.stats.delays_s.append(delay)
                connection.last_release = release
                if isinstance(fault, Cut):
                    if connection.budget is None:
                        connection.budget = connection.forwarded + self._rng.randint(
                            fault.min_bytes, fault.max_bytes
                        )
                    room = connection.budget - connection.forwarded
                    if len(data) >= room:
                        self._count_cut(len(data) - room, room)
                        connection.responses.put_nowait((release, data[:room], _CUT))
                        return
                connection.forwarded += len(data)
                self.stats.forwarded_bytes += len(data)
                connection.responses.put_nowait((release, data, ""))
        except OSError:
            connection.abort()
            return
        connection.responses.put_nowait((connection.last_release, b"", _CLOSE))

    def _count_cut(self, dropped: int, forwarded: int) -> None:
        stats = self.stats
        stats.cuts += 1
        stats.forwarded_bytes += forwarded
        stats.dropped_bytes += dropped
        if dropped:
            stats.cuts_dropping_responses += 1

    async def _deliver(self, connection: _Connection) -> None:
        """Write queued response chunks at their release times; end as the queue says."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                release, data, then = await connection.responses.get()
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data:
                    connection.client.write(data)
                    await connection.client.drain()
                if then == _CUT:  # the prefix goes out first, then the connection dies
                    await _flushed(connection.client, loop.time() + 1.0)
                    connection.abort()
                    return
                if then == _CLOSE:
                    connection.client.close()  # sends what is buffered, then FIN
                    connection.upstream.transport.abort()
                    connection.closed.set()
                    return
        except OSError:
            connection.abort()


async def _flushed(writer: asyncio.StreamWriter, deadline: float) -> None:
    """Wait until the kernel took everything buffered (or ``deadline`` on the loop's clock)."""
    loop = asyncio.get_running_loop()
    while writer.transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.001)
