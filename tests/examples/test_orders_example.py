"""examples/orders against a real server: routing to payments and inventory, the saga, the
retried payment, the compensated order, the failed payment in the dead-letter topic, and the
event-sourced order histories with their report rebuilt by ``moldau replay``."""

from __future__ import annotations

import importlib
import io
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from grpc_api.testing import ServerProcess
from moldau import Consumer, EventStore, Exchanges, Queues
from moldau.cli import main as moldau_main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orders"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data") as running:
        yield running


MODULES = ("history", "report", "shop", "app")


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("ORDER_REPORT_DB", str(tmp_path / "order-report.db"))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.chdir(tmp_path)
    for name in MODULES:
        sys.modules.pop(name, None)
    yield importlib.import_module("app")
    for name in MODULES:
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


def _report(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM order_report ORDER BY order_id").fetchall()


def test_order_histories_and_the_report_rebuilt_by_replay(
        server: ServerProcess, app: ModuleType, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    app.main(server.address)
    printed = capsys.readouterr().out
    assert "report 1004: shipped, payment paid after 2, stock reserved, 4 events" in printed
    assert "report 1003: cancelled, payment failed after 3, stock released, 5 events" in printed
    history = sys.modules["history"]
    with EventStore(server.address, topic=history.TOPIC) as store:
        types = {order: [e.type for e in store.read_stream(f"order-{order}")]
                 for order in ("1001", "1005")}
        # each step once, in the order the saga learnt of it; redeliveries added nothing
        assert types["1001"][0] == "OrderPlaced"
        assert sorted(types["1001"][1:3]) == ["PaymentSucceeded", "StockReserved"]
        assert types["1001"][3:] == ["OrderShipped"]
        assert types["1005"][0] == "OrderPlaced"
        assert set(types["1005"]) == {"OrderPlaced", "PaymentFailed", "StockReserved",
                                      "OrderCancelled", "StockReleased"}
        assert len(types["1005"]) == 5
        assert types["1005"].index("StockReleased") > types["1005"].index("StockReserved")
    sys.modules["report"].order_report.store.close()
    db = tmp_path / "order-report.db"
    live = _report(db)
    assert [(row[0], row[3], row[4], row[6]) for row in live] == [
        ("1001", "shipped", "paid", "reserved"), ("1002", "shipped", "paid", "reserved"),
        ("1003", "cancelled", "failed", "released"), ("1004", "shipped", "paid", "reserved"),
        ("1005", "cancelled", "failed", "released")]

    out, err = io.StringIO(), io.StringIO()
    code = moldau_main(["replay", "--projection", "report:order_report", "--server",
                        server.address], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert _report(db) == live  # the rebuilt read model equals the one built live
    assert "replayed 22 events" in err.getvalue()
