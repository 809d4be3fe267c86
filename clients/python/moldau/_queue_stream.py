"""One Consume stream: credit-based pushes of deliveries, and settlements batched per request.

The server pushes deliveries while the client has credit (:meth:`ConsumeStream.grant`); acks,
nacks, extends and releases travel on the same stream. Each settlement call here queues one
operation and returns an awaitable of its outcome; a flusher task sends everything queued so
far as one request with a correlation id, at most :data:`MAX_OUTSTANDING` requests awaiting
their answer at a time. While those are on their way, new settlements pile up and leave
together: the same group-commit idea as the server's state writes, so a busy worker sends a
few large requests instead of one per message.

Concurrency: every method runs on the event loop that opened the stream; none is thread-safe.
If the stream fails (the server restarted or shut down), every pending settlement fails with
the translated error and :meth:`ConsumeStream.next_batch` raises it; leases still held come
back to the queue when they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from moldau._feed import RequestFeed
from moldau._queue_types import LeaseError, Message, NackResult
from moldau._queue_wire import messages, nack_action, nack_result
from moldau._runtime import cancel_and_wait, connection_error
from moldau.errors import ClientClosedError, MoldauError, error_from_rpc, error_from_status
from moldau.v1 import queues_pb2, queues_pb2_grpc

log = logging.getLogger(__name__)

__all__ = ["MAX_OUTSTANDING", "ConsumeStream", "SettleCallback", "SettleKind"]

_pb = queues_pb2
#: Settlement requests awaiting their answer at once; more settlements wait and are batched.
MAX_OUTSTANDING = 4
_Kind = Literal["ack", "nack", "reject", "extend", "release"]
SettleKind = Literal["ack", "nack", "reject"]


#: Called with (result, None) or (None, error) once a settlement is answered.
SettleCallback = Callable[[Any, "MoldauError | None"], None]


@dataclass(slots=True)
class _Op:
    """One queued operation; its outcome goes to ``future`` or, cheaper, to ``callback``."""

    kind: _Kind
    lease_id: str
    future: asyncio.Future[Any] | None
    error: str = ""
    lease_ms: int = 0
    callback: SettleCallback | None = None
    done: bool = False

    def resolve(self, result: Any) -> None:
        if self.done:
            return
        self.done = True
        if self.callback is not None:
            self._call_back(result, None)
        elif self.future is not None and not self.future.done():
            self.future.set_result(result)

    def reject(self, error: MoldauError) -> None:
        if self.done:
            return
        self.done = True
        if self.callback is not None:
            self._call_back(None, error)
        elif self.future is not None and not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # retrieved: nobody may be waiting any more

    def _call_back(self, result: Any, error: MoldauError | None) -> None:
        """Run the callback; a failing one is logged, never allowed to end the stream's
        reader (which would strand every other settlement)."""
        assert self.callback is not None
        try:
            self.callback(result, error)
        except Exception:
            log.exception("settlement callback for lease %s failed", self.lease_id)


class ConsumeStream:
    """A Consume call on one queue (see the module docstring); made by
    :meth:`moldau.queues.AsyncQueues.consume`."""

    def __init__(self, stub: queues_pb2_grpc.QueueServiceStub, queue: str, *, consumer: str,
                 lease_ms: int, max_batch: int, server: str) -> None:
        self.queue = queue
        self._stub = stub
        self._start = _pb.ConsumeStart(queue=queue, consumer=consumer, lease_ms=lease_ms,
                                       max_batch=max_batch)
        self._server = server
        self._requests: asyncio.Queue[queues_pb2.ConsumeRequest | None] = asyncio.Queue()
        self._inbox: asyncio.Queue[list[Message] | None] = asyncio.Queue()
        self._pending: list[_Op] = []
        self._credit = 0
        self._credit_batch = 1
        self._waiting: dict[int, list[_Op]] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._answered = asyncio.Event()  # set whenever settlements were answered or failed
        self._error: MoldauError | None = None
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._call: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self, credit: int = 0) -> None:
        """Start the call with ``credit`` records granted. Credit granted later travels with
        settlements, or alone once it reaches a quarter of this (or nothing is pending)."""
        self._credit_batch = max(1, credit // 4)
        self._call = self._stub.Consume(RequestFeed(self._requests))
        self._requests.put_nowait(_pb.ConsumeRequest(start=self._start, credit=credit))
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._flush())]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, wait for the answers, then end the call (idempotent).
        Held leases are not released by this: release them first for a prompt handover."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError, MoldauError):
            await asyncio.wait_for(self._drained(), timeout_s)
        self._requests.put_nowait(None)  # half-close: the server ends the call
        reader = self._tasks[0] if self._tasks else None
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(reader), timeout_s)
        for task in self._tasks:
            await cancel_and_wait(task)
        if self._call is not None:
            self._call.cancel()
        self._fail_all(ClientClosedError("the consume stream is closed"))

    async def _drained(self) -> None:
        while self._pending or self._waiting:
            self._answered.clear()
            await self._answered.wait()

    # ------------------------------------------------------------------ deliveries

    def grant(self, credit: int) -> None:
        """Be ready for ``credit`` more records (sent with the next request)."""
        self._credit += credit
        self._wake.set()

    async def next_batch(self) -> list[Message]:
        """The next pushed deliveries; [] once the stream has ended cleanly.

        Raises:
            MoldauError: the stream failed (the translated status).
        """
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # later calls see the end too
            if self._error is not None:
                raise self._error
            return []
        return batch

    # ------------------------------------------------------------------ settlements

    def _queue_op(self, kind: _Kind, lease_id: str, error: str = "",
                  lease_ms: int = 0) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Op(kind, lease_id, future, error, lease_ms))
        return future

    def queue_settlement(self, kind: SettleKind, lease_id: str, error: str,
                         callback: SettleCallback) -> None:
        """Queue an ack, nack or reject whose outcome goes to ``callback(result, error)``:
        what :meth:`ack` (None or a LeaseError) or :meth:`nack` (a NackResult) returns, or
        the stream's failure. For callers settling many messages: no future, task or loop
        callback per message."""
        self._enqueue(_Op(kind, lease_id, None, error, callback=callback))

    def _enqueue(self, op: _Op) -> None:
        if self._error is not None:
            op.reject(self._error)
        else:
            self._pending.append(op)
            self._wake.set()

    async def ack(self, lease_id: str) -> LeaseError | None:
        """None once the ack is durable; a LeaseError if the lease was no longer current."""
        result: LeaseError | None = await self._queue_op("ack", lease_id)
        return result

    async def nack(self, lease_id: str, error: str, *, reject: bool = False) -> NackResult:
        result: NackResult = await self._queue_op("reject" if reject else "nack", lease_id,
                                                  error)
        return result

    async def extend(self, lease_id: str, lease_ms: int) -> int | LeaseError:
        """The new expiry (ms since the epoch), or why the lease could not be extended."""
        result: int | LeaseError = await self._queue_op("extend", lease_id, lease_ms=lease_ms)
        return result

    async def release(self, lease_id: str) -> LeaseError | None:
        result: LeaseError | None = await self._queue_op("release", lease_id)
        return result

    # ------------------------------------------------------------------ the two tasks

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._error is not None:
                return
            if self._pending:
                await self._room.wait()
            ops, self._pending = self._pending, []
            if not ops and self._credit < self._credit_batch and self._waiting:
                continue  # a little credit alone waits to ride with the next settlements
            credit, self._credit = (0, self._credit) if self._closing else (self._credit, 0)
            if not ops and not credit:
                continue
            request = _pb.ConsumeRequest(credit=credit)
            if ops:
                request.correlation_id = next(self._ids)
                self._fill(request, ops)
                self._waiting[request.correlation_id] = ops
                if len(self._waiting) >= MAX_OUTSTANDING:
                    self._room.clear()
            self._requests.put_nowait(request)

    @staticmethod
    def _fill(request: queues_pb2.ConsumeRequest, ops: list[_Op]) -> None:
        nacks: dict[tuple[bool, str], list[str]] = {}
        extends: dict[int, list[str]] = {}
        for op in ops:
            if op.kind == "ack":
                request.ack.append(op.lease_id)
            elif op.kind == "release":
                request.release.append(op.lease_id)
            elif op.kind == "extend":
                extends.setdefault(op.lease_ms, []).append(op.lease_id)
            else:
                nacks.setdefault((op.kind == "reject", op.error), []).append(op.lease_id)
        for (reject, error), ids in nacks.items():
            request.nack.append(_pb.ConsumeNack(lease_ids=ids, action=nack_action(reject),
                                                error=error))
        for lease_ms, ids in extends.items():
            request.extend.append(_pb.ConsumeExtend(lease_ids=ids, lease_ms=lease_ms))

    async def _read(self) -> None:
        try:
            async for response in self._call:
                if response.deliveries:
                    self._inbox.put_nowait(messages(self.queue, response.deliveries))
                if response.HasField("settled"):
                    self._settled(response.settled)
        except grpc.RpcError as exc:
            if not (self._closing and exc.code() == grpc.StatusCode.CANCELLED):
                self._error = connection_error(self._server, error_from_rpc(exc))
        except asyncio.CancelledError:
            raise
        finally:
            if self._error is None and self._pending and not self._closing:
                self._error = ClientClosedError("the server ended the consume stream")
            self._fail_all(self._error or ClientClosedError("the consume stream ended"))
            self._inbox.put_nowait(None)
            self._wake.set()

    def _settled(self, settled: queues_pb2.ConsumeSettled) -> None:
        ops = self._waiting.pop(settled.correlation_id, [])
        self._answered.set()
        if len(self._waiting) < MAX_OUTSTANDING:
            self._room.set()
        if settled.HasField("error"):
            error = error_from_status(settled.error.code, settled.error.message)
            for op in ops:
                op.reject(error)
            return
        failed = {f.lease_id: LeaseError(f.lease_id, f.reason) for f in settled.failed}
        nacked = {n.lease_id: nack_result(n) for n in settled.nacked}
        extended = {e.lease_id: e.lease_expires_ms for e in settled.extended}
        for op in ops:
            if op.kind in ("ack", "release"):
                op.resolve(failed.get(op.lease_id) if failed else None)
                continue
            lost = failed.get(op.lease_id) or LeaseError(op.lease_id, "no answer for it")
            if op.kind in ("nack", "reject"):
                op.resolve(nacked.get(op.lease_id) or NackResult(
                    op.lease_id, "lease-invalid", -1, -1, lost.reason))
            else:
                expiry = extended.get(op.lease_id)
                op.resolve(lost if expiry is None else expiry)

    def _fail_all(self, error: MoldauError) -> None:
        ops = [op for batch in self._waiting.values() for op in batch] + self._pending
        self._waiting.clear()
        self._pending = []
        self._room.set()
        self._answered.set()
        for op in ops:
            op.reject(error)
