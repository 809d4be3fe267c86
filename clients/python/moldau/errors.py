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
    |   +-- StreamNotFoundError      an event stream without events, or soft-deleted
    +-- TopicExistsError             ALREADY_EXISTS
    +-- OffsetOutOfRangeError        OUT_OF_RANGE: the offset is not (or no longer) stored
    +-- ResourceExhaustedError       RESOURCE_EXHAUSTED: a server limit or a full disk
    |   +-- RecordTooLargeError      a record or batch over max_batch_bytes / max.message.bytes
    +-- ProducerStateError           FAILED_PRECONDITION: sequence gap or fenced producer
    +-- CommitFailedError            the group refused a commit: partitions moved, member removed
    |   +-- StaleGenerationError     a live offset reset fenced the commit's generation
    +-- GroupMembershipError         FAILED_PRECONDITION: the group refuses this member's join
    +-- GroupNotEmptyError           FAILED_PRECONDITION: the group has live members
    +-- NoOffsetForPartitionError    auto_offset_reset="none" and the group never committed
    +-- BufferFullError              send() waited max_block_ms for buffer memory
    +-- ClientClosedError            the client was used after close()
    +-- AuthenticationError          UNAUTHENTICATED: no, an unknown or a revoked credential
    +-- PermissionDeniedError        PERMISSION_DENIED: an ACL does not allow the operation
    +-- ServerError                  INTERNAL, DATA_LOSS, UNKNOWN and other codes: a server fault
    +-- WrongExpectedVersionError    FAILED_PRECONDITION: the stream is at another version
    +-- DuplicateEventIdError        ALREADY_EXISTS: an event id is stored at another position
    +-- QueueExistsError             ALREADY_EXISTS: the queue exists with another definition
    +-- QueueStateError              FAILED_PRECONDITION: e.g. a retry handed to a work queue
    +-- ExchangeExistsError          ALREADY_EXISTS: the exchange exists with another type ...
    +-- ExchangeInDoubtError         UNAVAILABLE: bindings wait for a routing step (retriable)
    (and under NotFoundError: QueueNotFoundError, ExchangeNotFoundError; under
    InvalidRequestError: InvalidQueueRequestError, InvalidRoutingRequestError)

gRPC errors are translated in exactly one place, :func:`error_from_status`, so callers catch
these classes and never ``grpc.RpcError``. ``retriable`` says whether the same request may
succeed later unchanged; the producer retries those by itself. ``request_id`` is the id the
server logged the failed call under (its ``x-request-id``), "" when unknown.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "AuthenticationError",
    "BufferFullError",
    "ClientClosedError",
    "CommitFailedError",
    "ConnectionFailedError",
    "CorruptRecordError",
    "DeliveryTimeoutError",
    "DuplicateEventIdError",
    "ExchangeExistsError",
    "ExchangeInDoubtError",
    "ExchangeNotFoundError",
    "GroupMembershipError",
    "GroupNotEmptyError",
    "GroupNotFoundError",
    "InvalidQueueRequestError",
    "InvalidRequestError",
    "InvalidRoutingRequestError",
    "MoldauError",
    "NoOffsetForPartitionError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "PartitionNotFoundError",
    "PermissionDeniedError",
    "ProducerStateError",
    "QueueExistsError",
    "QueueNotFoundError",
    "QueueStateError",
    "RecordTooLargeError",
    "RequestTimeoutError",
    "ResourceExhaustedError",
    "ServerError",
    "StaleGenerationError",
    "StreamNotFoundError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UnavailableError",
    "WrongExpectedVersionError",
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
        self.request_id = ""


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


class GroupNotFoundError(NotFoundError):
    """The group has neither members nor committed offsets."""


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


class CommitFailedError(MoldauError):
    """The group refused a commit: the member no longer owns those partitions (a rebalance
    moved them) or was removed from the group. Not retriable: the new owner reads the
    uncommitted records again, so commit in ``on_revoke`` to keep that window small."""


class StaleGenerationError(CommitFailedError):
    """A live offset reset fenced the generation the commit carried.

    The positions being committed predate the reset, so storing them would undo it. The
    consumer must not retry with the new generation: ``poll()`` applies the reset's positions
    first, and commits after that carry the new generation.
    """


class GroupMembershipError(MoldauError):
    """The group refused this member's join for good, e.g. it uses another assignor."""


class GroupNotEmptyError(MoldauError):
    """The operation needs a group without live members (delete, reset without ``live``,
    commits outside membership): stop the consumers first."""


class NoOffsetForPartitionError(MoldauError):
    """``auto_offset_reset="none"`` and the group has no committed offset for these partitions.

    Raised by ``poll()`` until the application seeks them (``on_assign`` is the place).

    Attributes:
        partitions: The partitions without a position.
    """

    def __init__(self, message: str, partitions: list[Any]) -> None:
        super().__init__(message)
        self.partitions = partitions


class BufferFullError(MoldauError):
    """The producer's buffer_memory stayed full for max_block_ms: the broker is slower than
    the application, or unreachable."""


class ClientClosedError(MoldauError):
    pass


class AuthenticationError(MoldauError):
    """The server did not accept the caller's credential: pass a valid token or certificate."""


class PermissionDeniedError(MoldauError):
    """The caller is known but no ACL allows this operation on this resource."""


class ServerError(MoldauError):
    pass


class StreamNotFoundError(NotFoundError):
    """The event stream has no events, or it was soft-deleted (``deleted``)."""

    @property
    def deleted(self) -> bool:
        return "was deleted" in self.message


class WrongExpectedVersionError(MoldauError):
    """The stream is not at the version the append (or delete) expected; nothing was written.

    Attributes:
        current_version: The stream's version when the server checked (-1: no stream or
            deleted), from the ``moldau-current-version`` trailing metadata; None if unknown.
    """

    def __init__(self, message: str, code: Any = None,
                 current_version: int | None = None) -> None:
        super().__init__(message, code)
        self.current_version = current_version


class DuplicateEventIdError(MoldauError):
    """An event id is stored already, but not as this same append (new events need new ids)."""


class QueueNotFoundError(NotFoundError):
    """No queue of that name: it was never declared, or it was deleted."""


class QueueExistsError(MoldauError):
    """The queue exists with another definition: declare the same one, or delete it first."""


class QueueStateError(MoldauError):
    """The queue refuses the operation as it is defined (a retry for a work queue)."""


class InvalidQueueRequestError(InvalidRequestError):
    """A queue request with a bad argument; the message names it and what is allowed."""


class ExchangeNotFoundError(NotFoundError):
    """No exchange of that name is declared."""


class ExchangeExistsError(MoldauError):
    """The exchange was declared with another type, alternate or provenance."""


class ExchangeInDoubtError(UnavailableError):
    """Bindings cannot change until the router's interrupted step completes; retry shortly."""


class InvalidRoutingRequestError(InvalidRequestError):
    """A bad exchange or binding argument (type, pattern, header arguments, a loop)."""


_BY_CODE: dict[Any, type[MoldauError]] = {
    _S.UNAVAILABLE: UnavailableError,
    _S.DEADLINE_EXCEEDED: RequestTimeoutError,
    _S.INVALID_ARGUMENT: InvalidRequestError,
    _S.NOT_FOUND: NotFoundError,
    _S.ALREADY_EXISTS: TopicExistsError,
    _S.OUT_OF_RANGE: OffsetOutOfRangeError,
    _S.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    _S.FAILED_PRECONDITION: ProducerStateError,
    _S.UNAUTHENTICATED: AuthenticationError,
    _S.PERMISSION_DENIED: PermissionDeniedError,
}
_CODE_BY_NUMBER: dict[int, Any] = {code.value[0]: code for code in _S}
#: Server error classes (the ``moldau-error`` trailing metadata) that have a client class.
_BY_REASON: dict[str, type[MoldauError]] = {
    "UnknownTopicError": TopicNotFoundError,
    "UnknownPartitionError": PartitionNotFoundError,
    "UnknownGroupError": GroupNotFoundError,
    "UnknownMemberError": CommitFailedError,
    "NotPartitionOwnerError": CommitFailedError,
    "StaleGenerationError": StaleGenerationError,
    "InconsistentAssignorError": GroupMembershipError,
    "GroupNotEmptyError": GroupNotEmptyError,
    "TopicExistsError": TopicExistsError,
    "WrongExpectedVersionError": WrongExpectedVersionError,
    "StreamNotFoundError": StreamNotFoundError,
    "DuplicateEventIdError": DuplicateEventIdError,
    "UnknownQueueError": QueueNotFoundError,
    "QueueExistsError": QueueExistsError,
    "QueueError": QueueStateError,
    "InvalidQueueRequestError": InvalidQueueRequestError,
    "UnknownExchangeError": ExchangeNotFoundError,
    "ExchangeExistsError": ExchangeExistsError,
    "ExchangeInDoubtError": ExchangeInDoubtError,
    "InvalidRoutingRequestError": InvalidRoutingRequestError,
}
#: Trailing metadata key of the stream's version beside a WrongExpectedVersionError.
CURRENT_VERSION_KEY = "moldau-current-version"


def error_from_status(code: Any, message: str, reason: str | None = None) -> MoldauError:
    """The client error for a status ``code`` (a grpc.StatusCode or its number).

    ``reason`` is the server's error class from the ``moldau-error`` trailing metadata; when
    it is absent (errors reported inside a stream) the message's wording decides.
    """
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, _S.UNKNOWN)
    cls = _BY_CODE.get(code, ServerError)
    lowered = message.lower()
    by_reason = _BY_REASON.get(reason or "")
    group_error = _group_error(lowered) if cls in (NotFoundError, ProducerStateError) else None
    if by_reason is not None:
        cls = by_reason
    elif group_error is not None:
        cls = group_error
    elif cls is NotFoundError:
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
    reason = None
    request_id = ""
    current_version: int | None = None
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        text = value if isinstance(value, str) else bytes(value).decode("ascii", "replace")
        if key == "moldau-error":
            reason = text
        elif key == "x-request-id":
            request_id = text
        elif key == CURRENT_VERSION_KEY:
            current_version = int(text) if text.lstrip("-").isdigit() else None
    result = error_from_status(code, details or str(code), reason)
    result.request_id = request_id
    if isinstance(result, WrongExpectedVersionError):
        result.current_version = current_version
    return result


def _group_error(message: str) -> type[MoldauError] | None:
    """The group coordinator's refusals, told apart by the server's wording."""
    if "generation" in message and "is stale" in message:
        return StaleGenerationError
    if "does not own" in message or "is not in group" in message:
        return CommitFailedError
    if "assignor" in message and "group" in message:
        return GroupMembershipError
    return None


def _is_connection_failure(message: str) -> bool:
    """gRPC reports refused connections and DNS failures as UNAVAILABLE with these words."""
    return any(
        word in message
        for word in ("failed to connect", "connection refused", "errors resolving", "dns")
    )
