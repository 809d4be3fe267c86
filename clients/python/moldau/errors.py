"""Errors raised by the Moldau client.

Tree::

    MoldauError                      root; ``code`` (grpc.StatusCode or None), ``message``
    +-- ConnectionFailedError        the server could not be reached (retriable)
    +-- UnavailableError             UNAVAILABLE: shutting down, storage refusing (retriable)
    +-- RequestTimeoutError          DEADLINE_EXCEEDED or a client-side wait ran out
    |   +-- DeliveryTimeoutError     a batch was not acknowledged within delivery_timeout_ms
    +-- InvalidRequestError          INVALID_ARGUMENT: fix the request
    |   +-- CorruptRecordError       a fetched batch failed its CRC or did not decode
    +-- NotFoundError                NOT_FOUND
    |   +-- TopicNotFoundError       no such topic
    |   +-- PartitionNotFoundError   the topic has fewer partitions
    +-- TopicExistsError             ALREADY_EXISTS
    +-- OffsetOutOfRangeError        OUT_OF_RANGE: the offset is not (or no longer) stored
    +-- ResourceExhaustedError       RESOURCE_EXHAUSTED: a server limit or a full disk
    |   +-- RecordTooLargeError      a record or batch over max_batch_bytes / max.message.bytes
    +-- ProducerStateError           FAILED_PRECONDITION: sequence gap or fenced producer
    +-- BufferFullError              send() waited max_block_ms for buffer memory
    +-- ClientClosedError            the client was used after close()
    +-- ServerError                  INTERNAL, DATA_LOSS, UNKNOWN and other codes: a server fault

gRPC errors are translated in exactly one place, :func:`error_from_status`, so callers catch
these classes and never ``grpc.RpcError``. ``retriable`` says whether the same request may
succeed later unchanged; the producer retries those by itself.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "BufferFullError",
    "ClientClosedError",
    "ConnectionFailedError",
    "CorruptRecordError",
    "DeliveryTimeoutError",
    "InvalidRequestError",
    "MoldauError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "PartitionNotFoundError",
    "ProducerStateError",
    "RecordTooLargeError",
    "RequestTimeoutError",
    "ResourceExhaustedError",
    "ServerError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UnavailableError",
    "error_from_rpc",
    "error_from_status",
]

_S = grpc.StatusCode


class MoldauError(Exception):
    """Root of the client's errors.

    Attributes:
        code: The gRPC status code the server answered with; None for client-side errors.
        message: The server's message (which says what to fix), or the client's.
    """

    retriable = False

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ConnectionFailedError(MoldauError):
    """No connection to the server (wrong address, server down)."""

    retriable = True


class UnavailableError(MoldauError):
    retriable = True


class RequestTimeoutError(MoldauError):
    """A deadline passed before the server answered."""

    retriable = True


class DeliveryTimeoutError(RequestTimeoutError):
    """A batch was not acknowledged in time; whether it was stored is unknown."""

    retriable = False


class InvalidRequestError(MoldauError):
    pass


class CorruptRecordError(InvalidRequestError):
    """Fetched bytes failed their CRC-32C or did not decode as RecordBatch v2."""


class NotFoundError(MoldauError):
    pass


class TopicNotFoundError(NotFoundError):
    pass


class PartitionNotFoundError(NotFoundError):
    pass


class TopicExistsError(MoldauError):
    pass


class OffsetOutOfRangeError(MoldauError):
    pass


class ResourceExhaustedError(MoldauError):
    pass


class RecordTooLargeError(ResourceExhaustedError):
    pass


class ProducerStateError(MoldauError):
    pass


class BufferFullError(MoldauError):
    """The producer's buffer_memory stayed full for max_block_ms: the broker is slower than
    the application, or unreachable."""


class ClientClosedError(MoldauError):
    pass


class ServerError(MoldauError):
    pass


_BY_CODE: dict[Any, type[MoldauError]] = {
    _S.UNAVAILABLE: UnavailableError,
    _S.DEADLINE_EXCEEDED: RequestTimeoutError,
    _S.INVALID_ARGUMENT: InvalidRequestError,
    _S.NOT_FOUND: NotFoundError,
    _S.ALREADY_EXISTS: TopicExistsError,
    _S.OUT_OF_RANGE: OffsetOutOfRangeError,
    _S.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    _S.FAILED_PRECONDITION: ProducerStateError,
}
_CODE_BY_NUMBER: dict[int, Any] = {code.value[0]: code for code in _S}


def error_from_status(code: Any, message: str) -> MoldauError:
    """The client error for a status ``code`` (a grpc.StatusCode or its number)."""
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, _S.UNKNOWN)
    cls = _BY_CODE.get(code, ServerError)
    lowered = message.lower()
    if cls is NotFoundError:
        cls = PartitionNotFoundError if "partition" in lowered else TopicNotFoundError
    elif cls is ResourceExhaustedError and ("bytes" in lowered and "over" in lowered):
        cls = RecordTooLargeError
    elif code == _S.UNAVAILABLE and _is_connection_failure(lowered):
        cls = ConnectionFailedError
    return cls(message or code.name, code)


def error_from_rpc(error: grpc.RpcError) -> MoldauError:
    """Translate a ``grpc.RpcError`` (sync or aio) into the client's tree."""
    code = error.code() if hasattr(error, "code") else _S.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    return error_from_status(code, details or str(code))


def _is_connection_failure(message: str) -> bool:
    """gRPC reports refused connections and DNS failures as UNAVAILABLE with these words."""
    return any(
        word in message
        for word in ("failed to connect", "connection refused", "errors resolving", "dns")
    )
