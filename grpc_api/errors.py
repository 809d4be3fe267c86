"""The one place where errors become gRPC status codes.

Tree of the errors raised by grpc_api itself (engine errors are in engine/errors.py)::

    ApiError                     a request the servicer refuses before calling the engine
    +-- InvalidRequestError      INVALID_ARGUMENT: a missing or contradictory field
    +-- LimitExceededError       RESOURCE_EXHAUSTED: over a configured server limit
    +-- NotReadyError            UNAVAILABLE: the broker is opening or shutting down

Servicer methods are wrapped with :func:`unary_errors` or :func:`stream_errors`, which turn any
exception into ``context.abort`` through :data:`STATUS_TABLE`: bad input never surfaces as
INTERNAL or UNKNOWN. Only an exception no row matches is INTERNAL, and it is logged as a bug.
Each row adds a hint to the engine's message saying what the caller can do about it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from engine.errors import (
    CorruptLogError,
    DiskFullError,
    DuplicateEventIdError,
    EngineError,
    EventStoreError,
    ExchangeExistsError,
    ExchangeInDoubtError,
    GroupError,
    GroupNotEmptyError,
    InconsistentAssignorError,
    InvalidAclError,
    InvalidConfigError,
    InvalidEventStoreRequestError,
    InvalidGroupRequestError,
    InvalidQueueRequestError,
    InvalidRoutingRequestError,
    InvalidTopicError,
    LogReadOnlyError,
    NotPartitionOwnerError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerError,
    ProducerFencedError,
    QueueError,
    QueueExistsError,
    RoutingError,
    SecurityError,
    StaleGenerationError,
    StorageError,
    StreamNotFoundError,
    TopicError,
    TopicExistsError,
    TopicLimitError,
    UnknownExchangeError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownQueueError,
    UnknownTopicError,
    WrongExpectedVersionError,
)
from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    RecordError,
)
from grpc_api.logs import REQUEST_ID, REQUEST_ID_KEY

__all__ = [
    "ERROR_METADATA_KEY",
    "STATUS_TABLE",
    "ApiError",
    "InvalidRequestError",
    "LimitExceededError",
    "NotReadyError",
    "observe_refusal",
    "status_for",
    "stream_errors",
    "unary_errors",
]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request refused by the API layer; ``code`` is its gRPC status."""

    code: Any = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequestError(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class LimitExceededError(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReadyError(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


_S = grpc.StatusCode

#: Exception class -> (status code, hint appended to the message). The most specific class in
#: an exception's MRO wins, so a leaf row overrides its parent's.
STATUS_TABLE: dict[type[BaseException], tuple[Any, str]] = {
    # bad input
    RecordError: (_S.INVALID_ARGUMENT, "send one valid RecordBatch v2 (magic 2)"),
    InvalidBatchError: (_S.INVALID_ARGUMENT, "send one valid RecordBatch v2 (magic 2)"),
    CorruptBatchError: (
        _S.INVALID_ARGUMENT,
        "the batch changed after its CRC was computed; re-encode it and resend",
    ),
    InvalidConfigError: (_S.INVALID_ARGUMENT, "fix the config key or value"),
    TopicError: (_S.INVALID_ARGUMENT, ""),
    InvalidTopicError: (_S.INVALID_ARGUMENT, ""),
    # missing and existing things
    UnknownTopicError: (_S.NOT_FOUND, "create it first or check the name with ListTopics"),
    UnknownPartitionError: (_S.NOT_FOUND, "DescribeTopic lists the partitions"),
    TopicExistsError: (_S.ALREADY_EXISTS, "choose another name or delete the topic first"),
    TopicLimitError: (_S.RESOURCE_EXHAUSTED, ""),
    # producer state
    ProducerError: (_S.FAILED_PRECONDITION, ""),
    OutOfOrderSequenceError: (
        _S.FAILED_PRECONDITION,
        "resend the missing batches in order, or restart the producer with a new producer id",
    ),
    ProducerFencedError: (
        _S.FAILED_PRECONDITION,
        "a newer instance of this producer is running; stop this one",
    ),
    # ranges and sizes
    OffsetOutOfRangeError: (
        _S.OUT_OF_RANGE,
        "fetch from an offset inside that range (ListOffsets EARLIEST / LATEST)",
    ),
    BatchTooLargeError: (
        _S.RESOURCE_EXHAUSTED,
        "split the records into smaller batches or raise the topic's max.message.bytes",
    ),
    DiskFullError: (_S.RESOURCE_EXHAUSTED, ""),
    # the broker's own storage
    CorruptLogError: (
        _S.DATA_LOSS,
        "the stored bytes are damaged; restart the broker to recover the partition",
    ),
    LogReadOnlyError: (_S.UNAVAILABLE, ""),
    StorageError: (_S.UNAVAILABLE, "the broker's storage refused the operation"),
    GroupError: (_S.FAILED_PRECONDITION, ""),
    UnknownGroupError: (_S.NOT_FOUND, "list groups to see which exist"),
    UnknownMemberError: (_S.NOT_FOUND, "join the group again"),
    StaleGenerationError: (_S.FAILED_PRECONDITION, "rejoin to get the current generation"),
    NotPartitionOwnerError: (_S.FAILED_PRECONDITION, "commit only partitions you are assigned"),
    GroupNotEmptyError: (_S.FAILED_PRECONDITION, "stop the group's consumers first"),
    InconsistentAssignorError: (_S.FAILED_PRECONDITION, "use the group's assignor"),
    InvalidGroupRequestError: (_S.INVALID_ARGUMENT, ""),
    # event store
    EventStoreError: (_S.FAILED_PRECONDITION, ""),
    WrongExpectedVersionError: (_S.FAILED_PRECONDITION, ""),
    StreamNotFoundError: (_S.NOT_FOUND, "append with NO_STREAM or ANY to start it"),
    DuplicateEventIdError: (_S.ALREADY_EXISTS, ""),
    InvalidEventStoreRequestError: (_S.INVALID_ARGUMENT, ""),
    # routing
    RoutingError: (_S.FAILED_PRECONDITION, ""),
    UnknownExchangeError: (_S.NOT_FOUND, "declare it first, or list the exchanges"),
    ExchangeExistsError: (_S.ALREADY_EXISTS, ""),
    ExchangeInDoubtError: (_S.UNAVAILABLE, ""),
    InvalidRoutingRequestError: (_S.INVALID_ARGUMENT, ""),
    # work queues
    QueueError: (_S.FAILED_PRECONDITION, ""),
    UnknownQueueError: (_S.NOT_FOUND, "declare it first, or list the queues"),
    QueueExistsError: (_S.ALREADY_EXISTS, ""),
    InvalidQueueRequestError: (_S.INVALID_ARGUMENT, ""),
    # access control (authentication and ACL refusals are the interceptor's, grpc_api/auth.py)
    SecurityError: (_S.FAILED_PRECONDITION, ""),
    InvalidAclError: (_S.INVALID_ARGUMENT, "see 'moldau acl add --help' for the values"),
    EngineError: (_S.INTERNAL, ""),
}


def status_for(exc: BaseException) -> tuple[Any, str]:
    """The gRPC status code and message for ``exc``; INTERNAL only for unmapped errors."""
    if isinstance(exc, ApiError):
        return exc.code, str(exc)
    for cls in type(exc).__mro__:
        row = STATUS_TABLE.get(cls)
        if row is not None:
            code, hint = row
            message = str(exc) or type(exc).__name__
            return code, f"{message}; {hint}" if hint else message
    return _S.INTERNAL, f"internal error ({type(exc).__name__}); this is a bug, please report it"


#: Trailing metadata key naming the error class (``StaleGenerationError``, ``UnknownTopicError``
#: ...): a stable, machine-readable reason beside the human message.
ERROR_METADATA_KEY = "moldau-error"


def error_reason(exc: BaseException) -> str:
    """The reason clients see: the error's class name, or ``InternalError`` for bugs."""
    if isinstance(exc, ApiError) or any(cls in STATUS_TABLE for cls in type(exc).__mro__):
        return type(exc).__name__
    return "InternalError"


async def abort_with(context: Any, exc: BaseException) -> NoReturn:
    """End the call with the status :func:`status_for` chooses for ``exc``."""
    code, message = status_for(exc)
    if code == _S.INTERNAL:
        log.error("unexpected error in a request: %r", exc, exc_info=exc)
    # the error class travels as trailing metadata, so clients need not parse the message
    reason = ((ERROR_METADATA_KEY, error_reason(exc)), (REQUEST_ID_KEY, REQUEST_ID.get()))
    await context.abort(code, message, trailing_metadata=reason)
    raise AssertionError("context.abort returned")  # pragma: no cover  (it always raises)


_Self = TypeVar("_Self")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


#: Called with (method, status code name, seconds) after every servicer call; see metrics.py.
RpcObserver = Callable[[str, str, float], None]
_observer: RpcObserver | None = None


def set_rpc_observer(observer: RpcObserver | None) -> None:
    """Report every call's outcome to ``observer`` (one per process: the server's metrics)."""
    global _observer  # noqa: PLW0603  (one process-wide hook, set once at start-up)
    _observer = observer


def _method_name(method: Callable[..., Any]) -> str:
    """``ProduceService/Produce`` from the servicer method ``ProduceServicer.Produce``."""
    owner, _, name = method.__qualname__.rpartition(".")
    return f"{owner.removesuffix('r')}/{name}" if owner.endswith("Servicer") else name


def _observe(name: str, code: str, started: float) -> None:
    observer = _observer
    if observer is not None:
        observer(name, code, time.perf_counter() - started)


def observe_refusal(method: str, code: str) -> None:
    """Count a call refused before its servicer ran (``/moldau.v1.AdminService/CreateTopic``
    is reported as ``AdminService/CreateTopic``, the name the servicer's calls use); no
    latency is recorded for it."""
    observer = _observer
    if observer is not None:
        service, _, name = method.rpartition("/")
        observer(f"{service.rpartition('.')[2]}/{name}", code, -1.0)


def _code_name(exc: BaseException, context: Any) -> str:
    if isinstance(exc, grpc.aio.AbortError):  # aborted by the servicer itself
        code = getattr(context, "code", None)
        code = code() if callable(code) else code
        return str(getattr(code, "name", "UNKNOWN"))
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code, _ = status_for(exc)
    return str(code.name)


def unary_errors(
    method: Callable[[_Self, _Request, Any], Awaitable[_Response]],
) -> Callable[[_Self, _Request, Any], Awaitable[_Response]]:
    """Translate exceptions of a unary servicer method into its call status."""
    name = _method_name(method)

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Request, context: Any) -> _Response:
        started = time.perf_counter()
        try:
            response = await method(self, request, context)
        except grpc.aio.AbortError as exc:
            _observe(name, _code_name(exc, context), started)
            raise
        except asyncio.CancelledError:
            _observe(name, "CANCELLED", started)
            raise
        except Exception as exc:  # the translation boundary: every error maps to a status
            _observe(name, _code_name(exc, context), started)
            await abort_with(context, exc)
        _observe(name, "OK", started)
        return response

    return wrapper


def stream_errors(
    method: Callable[[_Self, _Request, Any], AsyncIterator[_Response]],
) -> Callable[[_Self, _Request, Any], AsyncIterator[_Response]]:
    """Translate exceptions of a response-streaming servicer method into its call status."""
    name = _method_name(method)

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Request, context: Any) -> AsyncIterator[_Response]:
        started = time.perf_counter()
        try:
            async for item in method(self, request, context):
                yield item
        except grpc.aio.AbortError as exc:
            _observe(name, _code_name(exc, context), started)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            _observe(name, "CANCELLED", started)
            raise
        except Exception as exc:  # the translation boundary: every error maps to a status
            _observe(name, _code_name(exc, context), started)
            await abort_with(context, exc)
        _observe(name, "OK", started)

    return wrapper
