"""examples/event_sourcing against a real server: commands, the projection, queries, rebuild."""

from __future__ import annotations

import importlib
import io
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from grpc_api.testing import ServerProcess
from moldau.cli import main as moldau_main
from moldau.eventstore import EventStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "event_sourcing"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("example") / "data") as running:
        yield running


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    monkeypatch.setenv("ORDER_SUMMARY_DB", str(tmp_path / "order-summary.db"))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.chdir(tmp_path)
    for name in ("orders", "summary", "app"):
        sys.modules.pop(name, None)
    yield {name: importlib.import_module(name) for name in ("orders", "summary", "app")}
    for name in ("orders", "summary", "app"):
        sys.modules.pop(name, None)


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM order_summary ORDER BY order_id").fetchall()


def test_commands_projection_queries_and_rebuild(server: ServerProcess, tmp_path: Path,
                                                 example: dict[str, ModuleType],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    orders, summary, app = example["orders"], example["summary"], example["app"]
    app.main(server.address)
    printed = capsys.readouterr().out
    assert "revenue: 9.0" in printed
    ann = summary.orders_of("ann")
    assert [(o["order_id"], o["status"], o["items"], o["total_cents"]) for o in ann] == [
        ("1001", "paid", 2, 900), ("1002", "cancelled", 1, 1200)]

    with EventStore(server.address, topic=orders.TOPIC) as store:
        bus = orders.command_bus(store)
        with pytest.raises(orders.OrderRejectedError, match="already placed"):
            bus.dispatch(orders.PlaceOrder("1001", "bob"))
        # concurrent writers: each command re-decides on fresh state, none is lost
        bus.dispatch(orders.PlaceOrder("2001", "bob"))
        threads = [threading.Thread(target=bus.dispatch,
                                    args=(orders.AddItem("2001", f"sku-{i}", 1, 100),))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.read_stream("order-2001").last_version == 4
    from moldau.projections import ProjectionRunner

    ProjectionRunner(summary.order_summary, server.address).run(until_caught_up=True)
    summary.order_summary.store.close()
    db = tmp_path / "order-summary.db"
    live = _rows(db)
    assert ("2001", "bob", "placed", 4, 400, 4) in live

    out, err = io.StringIO(), io.StringIO()
    code = moldau_main(["replay", "--projection", "summary:order_summary", "--server",
                        server.address], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert _rows(db) == live
    assert "replayed 11 events" in err.getvalue()
