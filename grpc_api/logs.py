"""Server logging: readable text or one JSON object per line, each with its request id.

The request id is the ``x-request-id`` metadata a client sent, or one the server made up; it is
held in :data:`REQUEST_ID` for the task serving the call (grpc.aio runs interceptors and the
handler in the same task), so any log line written while serving a call names it, and the
same id goes back to the client with an error status. Lines logged outside a call carry "-".
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import IO

__all__ = ["REQUEST_ID", "REQUEST_ID_KEY", "JsonFormatter", "RequestIdFilter", "configure_logging"]

#: Metadata key of the request id: read from the client's call, sent back with an error status.
REQUEST_ID_KEY = "x-request-id"

#: The id of the call the current task serves; "-" outside calls.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("moldau_request_id", default="-")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current call's request id (as ``record.request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, ms), level, logger, message, request id,
    and the exception text when there is one; extra fields passed with ``extra=`` are kept."""

    _STANDARD = frozenset(
        logging.LogRecord("", 0, "", 0, "", (), None).__dict__
    ) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        document: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                document[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(level: str, log_format: str, stream: IO[str] | None = None) -> None:
    """Route the root logger to ``stream`` (stderr: stdout carries the "serving on" line)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _CancelRaceFilter) for f in core.filters):
        core.addFilter(_CancelRaceFilter())
    if not any(isinstance(f, PeerEncodingFilter) for f in core.filters):
        core.addFilter(PeerEncodingFilter())


class _CancelRaceFilter(logging.Filter):
    """Drops grpc's "ExecuteBatchError raised in core" ERROR (with a traceback), logged when a
    client cancels a stream while the server's write waits on flow control: a race inside
    gRPC, harmless (the call is over), and otherwise one alarming traceback per cancel."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ExecuteBatchError" not in record.getMessage()


class PeerEncodingFilter(logging.Filter):
    """Turns grpc's "Invalid encoding on b'...'" ERROR (with a traceback) into one WARNING.

    grpc logs it when a client sends a method name or metadata that is not UTF-8, then decodes
    the bytes as latin-1 and goes on: the client's mistake, not the server's, and an ERROR with a
    traceback per bad header would let any client fill the error log. The bytes are kept,
    shortened, as their escaped repr.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid encoding on %s" and record.levelno >= logging.ERROR:
            args = record.args if isinstance(record.args, tuple) else ()
            value = repr(args[0]) if args else "?"
            if len(value) > _PEER_BYTES_SHOWN:
                value = value[:_PEER_BYTES_SHOWN] + "..."
            record.msg = "a client sent a method or metadata not in UTF-8 (read as latin-1): %s"
            record.args = (value,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


_PEER_BYTES_SHOWN = 120
