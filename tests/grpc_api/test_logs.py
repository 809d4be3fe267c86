"""The server's logging setup: grpc's reports of a client's bad bytes are not server errors."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from grpc_api.logs import configure_logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    core = logging.getLogger("grpc._cython.cygrpc")
    filters = list(core.filters)
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    core.filters[:] = filters


def test_a_clients_bad_utf8_is_one_warning_not_an_error_with_a_traceback(
    log_stream: io.StringIO,
) -> None:
    core = logging.getLogger("grpc._cython.cygrpc")
    bad = b"\xeb\x8d" + b"x" * 500
    try:  # what grpc's _decode does with a method or header value that is not UTF-8
        bad.decode("utf8")
    except UnicodeDecodeError:
        core.exception("Invalid encoding on %s", bad)
    text = log_stream.getvalue()
    assert "WARNING" in text
    assert "ERROR" not in text
    assert "Traceback" not in text
    assert "not in UTF-8" in text
    assert "\\xeb\\x8d" in text  # the bytes, escaped
    assert len(text) < 300  # shortened: a client cannot fill the log with one header


def test_other_grpc_errors_stay_errors(log_stream: io.StringIO) -> None:
    logging.getLogger("grpc._cython.cygrpc").error("something else broke: %s", "detail")
    assert "ERROR" in log_stream.getvalue()
