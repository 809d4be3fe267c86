"""examples/orders against a real server: routing to payments and inventory, the saga, the
retried payment, the compensated order and the failed payment in the dead-letter topic."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from grpc_api.testing import ServerProcess
from moldau import Consumer, Exchanges, Queues

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orders"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data") as running:
        yield running


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in ("shop", "app"):
        sys.modules.pop(name, None)
    yield importlib.import_module("app")
    for name in ("shop", "app"):
        sys.modules.pop(name, None)


def _values(address: str, topic: str) -> list[bytes]:
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        values: list[bytes] = []
        while batch := consumer.poll(timeout_ms=500):
            values += [r.value or b"" for r in batch]
        return values


def test_saga_ships_paid_orders_and_compensates_failed_payments(
        server: ServerProcess, app: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    app.main(server.address)
    printed = capsys.readouterr().out
    assert "order 1001: shipped (standard); gateway calls 1" in printed
    assert "order 1002: shipped (express); gateway calls 1" in printed
    assert "order 1003: cancelled, stock released; gateway calls 3" in printed
    assert "order 1004: shipped (standard); gateway calls 2" in printed  # retried once
    assert "order 1005: cancelled, stock released; gateway calls 3" in printed
    # the compensation gave back what 1003 and 1005 had reserved
    assert "stock: {'kettle': 9, 'teapot': 7, 'mug': 10}" in printed
    with Queues(server.address) as queues:
        letters = queues.dead_letters(queue="payments-work")
        assert sorted(d.key for d in letters) == [b"1003", b"1005"]  # type: ignore[type-var]
        for letter in letters:
            assert letter.attempts == 3
            assert letter.reason == "max-deliveries"
            assert letter.last_error.startswith("PaymentDeclinedError: card of order")
        for name in ("payments-work", "inventory-work", "saga", "ship-standard"):
            assert queues.describe(name).stats.depth == 0
    with Exchanges(server.address) as exchanges:
        orders = exchanges.describe("shop-orders").summary
        assert (orders.routed, orders.unroutable) == (5, 0)
    shipped = {topic: sorted(v[8:12] for v in _values(server.address, topic))
               for topic in ("shipping-standard", "shipping-express")}
    assert shipped == {"shipping-standard": [b"1001", b"1004"], "shipping-express": [b"1002"]}
    inventory = _values(server.address, "inventory")
    assert len(inventory) == 7  # five reservations and two releases
