"""examples/notifications against a real server: routing by preferences, backoff retries,
dead letters after the limit, and the per-channel metrics."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from grpc_api.testing import ServerProcess
from moldau import Exchanges, Queues

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "notifications"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data") as running:
        yield running


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in ("notify", "app"):
        sys.modules.pop(name, None)
    yield importlib.import_module("notify")
    for name in ("notify", "app"):
        sys.modules.pop(name, None)


def test_channels_retries_dead_letters_and_metrics(server: ServerProcess,
                                                   notify: ModuleType) -> None:
    count = 1_000
    report = asyncio.run(notify.run(server.address, count=count, user_count=200))
    users = notify.users(200)
    expected = notify.expected_deliveries(users, count)
    # 200 users; SMS users 33 and 132 have no valid number: 5 notifications each, 4 attempts
    dead_sms = sum(1 for n in range(count) if n % 200 in (33, 132))
    email, sms, push = (report.channels[c] for c in ("email", "sms", "push"))
    assert (sms.sent, sms.dead_lettered) == (expected["sms"] - dead_sms, dead_sms)
    assert sms.retried == 3 * dead_sms  # attempts 1 to 3 retried, the 4th dead-lettered
    assert (email.sent, email.dead_lettered) == (expected["email"], 0)
    assert email.retried == 2 * sum(1 for n in range(count) if n % 50 == 8)  # fails twice
    push_users = sum(1 for n in range(count) if "push" in users[n % 200].channels)
    assert (push.sent, push.dead_lettered) == (push_users, 0)
    assert push.retried == sum(1 for n in range(count)
                               if n % 10 == 3 and "push" in users[n % 200].channels)
    for metrics in report.channels.values():
        assert 0 < metrics.latency_ms(0.5) <= metrics.latency_ms(0.99) < 60_000
    with Queues(server.address) as queues:
        letters = queues.dead_letters(queue="send-sms")
        assert len(letters) == dead_sms
        assert {d.attempts for d in letters} == {notify.MAX_DELIVERIES}
        assert letters[0].last_error.startswith("ChannelError: SMS gateway: number of user")
        assert queues.dead_letters(queue="send-push") == []
        for channel in notify.CHANNELS:
            assert queues.describe(f"send-{channel}").stats.depth == 0
    with Exchanges(server.address) as exchanges:
        summary = exchanges.describe("notify").summary
        assert (summary.routed, summary.unroutable) == (count, 0)


def test_backoff_is_exponential(server: ServerProcess, notify: ModuleType) -> None:
    """The SMS dead letters' retries follow 20, 40, 80 ms (+-20% jitter)."""
    asyncio.run(notify.run(server.address, count=200, user_count=200))
    with Queues(server.address) as queues:
        letters = queues.dead_letters(queue="send-sms")
    assert len(letters) == 2  # users 33 and 132
    for letter in letters:
        span = letter.last_failure_ms - letter.first_failure_ms
        assert 0.8 * (20 + 40 + 80) <= span <= (20 + 40 + 80) * 1.2 + 400  # + maintenance
