"""Test helper: get a blocking Consumer's event loop lent to the polling thread."""

from __future__ import annotations

from moldau import Consumer, _runtime


def poll_until_lent(consumer: Consumer, poll_timeout_ms: float = 20) -> None:
    """Empty polls until the consumer's loop is lent to this thread (the first poll waits the
    old way and asks for it; a commit spawned by auto-commit takes it back for a moment)."""
    for _ in range(40):
        assert consumer.poll(timeout_ms=poll_timeout_ms) == []
        if consumer._thread._mode == _runtime._PARKED:
            return
    raise AssertionError("the consumer's loop was never lent to the polling thread")
