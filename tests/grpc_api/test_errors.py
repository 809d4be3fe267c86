"""The engine-error -> gRPC status table: bad input is never INTERNAL or UNKNOWN."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from engine import errors as e
from engine.records import errors as r
from grpc_api.errors import (
    STATUS_TABLE,
    InvalidRequestError,
    LimitExceededError,
    NotReadyError,
    status_for,
    stream_errors,
    unary_errors,
)

S = grpc.StatusCode

CASES: list[tuple[BaseException, object]] = [
    (e.UnknownTopicError("t"), S.NOT_FOUND),
    (e.UnknownPartitionError("t", 9, 3), S.NOT_FOUND),
    (e.TopicExistsError("t"), S.ALREADY_EXISTS),
    (e.InvalidTopicError("bad name"), S.INVALID_ARGUMENT),
    (e.InvalidConfigError("retention.ms must be a number"), S.INVALID_ARGUMENT),
    (r.InvalidBatchError("short", 0), S.INVALID_ARGUMENT),
    (r.UnsupportedMagicError(1), S.INVALID_ARGUMENT),
    (r.UnsupportedCodecError(7), S.INVALID_ARGUMENT),
    (r.CorruptBatchError(0, 1, 2), S.INVALID_ARGUMENT),
    (r.BatchTooLargeError("batch", 10, 5), S.RESOURCE_EXHAUSTED),
    (e.OutOfOrderSequenceError(1, 5, 9), S.FAILED_PRECONDITION),
    (e.ProducerFencedError(1, 0, 2), S.FAILED_PRECONDITION),
    (e.OffsetOutOfRangeError(50, 0, 10), S.OUT_OF_RANGE),
    (e.DiskFullError("disk full"), S.RESOURCE_EXHAUSTED),
    (e.CorruptLogError("/x", 10, "bad crc"), S.DATA_LOSS),
    (e.LogReadOnlyError("read-only"), S.UNAVAILABLE),
    (e.StorageError("closed"), S.UNAVAILABLE),
    (InvalidRequestError("topic is required"), S.INVALID_ARGUMENT),
    (LimitExceededError("too big"), S.RESOURCE_EXHAUSTED),
    (NotReadyError("opening"), S.UNAVAILABLE),
]


@pytest.mark.parametrize(("exc", "code"), CASES, ids=lambda c: type(c).__name__)
def test_status_for(exc: BaseException, code: object) -> None:
    got, message = status_for(exc)
    assert got == code
    assert str(exc) in message


def test_out_of_range_message_carries_the_valid_range() -> None:
    _, message = status_for(e.OffsetOutOfRangeError(50, 3, 10))
    assert "[3, 10)" in message
    assert "ListOffsets" in message


def test_no_public_engine_error_falls_through_to_internal() -> None:
    """Every class of the public error trees has a row; module-private ones (bugs) may not."""

    def subclasses(cls: type[BaseException]) -> list[type[BaseException]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    public = [
        cls
        for cls in subclasses(e.EngineError)[1:] + subclasses(r.RecordError)
        if cls.__module__ in {e.__name__, r.__name__}
    ]
    assert len(public) > 15
    for cls in public:
        row = next(STATUS_TABLE[base] for base in cls.__mro__ if base in STATUS_TABLE)
        assert row[0] != S.INTERNAL, cls


def test_unmapped_error_is_internal_and_says_it_is_a_bug() -> None:
    code, message = status_for(KeyError("x"))
    assert code == S.INTERNAL
    assert "bug" in message


class FakeContext:
    """Records the abort like grpc.aio does: abort raises to end the handler."""

    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None
        self.trailing_metadata: tuple[tuple[str, str], ...] = ()

    async def abort(
        self, code: object, message: str, trailing_metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.aborted = (code, message)
        self.trailing_metadata = trailing_metadata
        raise grpc.aio.AbortError()


class Servicer:
    @unary_errors
    async def Unary(self, request: Exception | None, context: object) -> str:  # noqa: N802
        if request is not None:
            raise request
        return "ok"

    @stream_errors
    async def Stream(  # noqa: N802
        self, request: Exception | None, context: object
    ) -> AsyncIterator[int]:
        yield 1
        if request is not None:
            raise request
        yield 2


def test_unary_errors_aborts_with_the_mapped_status() -> None:
    context = FakeContext()
    assert asyncio.run(Servicer().Unary(None, context)) == "ok"
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(Servicer().Unary(e.UnknownTopicError("t"), context))
    assert context.aborted is not None
    assert context.aborted[0] == S.NOT_FOUND
    assert context.trailing_metadata == (
        ("moldau-error", "UnknownTopicError"),
        ("x-request-id", "-"),
    )
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(Servicer().Unary(KeyError("bug"), context))
    assert context.aborted[0] == S.INTERNAL
    assert context.trailing_metadata == (("moldau-error", "InternalError"), ("x-request-id", "-"))


def test_stream_errors_aborts_after_the_items_already_sent() -> None:
    async def collect(request: Exception | None, context: FakeContext) -> list[int]:
        items = []
        with contextlib.suppress(grpc.aio.AbortError):
            async for item in Servicer().Stream(request, context):
                items.append(item)
        return items

    context = FakeContext()
    assert asyncio.run(collect(None, context)) == [1, 2]
    assert context.aborted is None
    assert asyncio.run(collect(e.OffsetOutOfRangeError(9, 0, 1), context)) == [1]
    assert context.aborted is not None
    assert context.aborted[0] == S.OUT_OF_RANGE
