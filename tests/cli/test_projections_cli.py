"""``moldau projections list|status|reset|rebuild`` over a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.cli import main
from moldau.projections import ProjectionRunner, SQLiteStore
from moldau.v1 import eventstore_pb2 as pb
from moldau.v1 import eventstore_pb2_grpc
from tests.cli import test_replay_support as support


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("projections-cli") / "data") as running:
        yield running


def moldau(server: ServerProcess, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--server", server.address], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_list_status_reset_rebuild(server: ServerProcess, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = moldau(server, "projections", "list")
    assert code == 0
    assert "no projections" in err
    with grpc.insecure_channel(server.address) as channel:
        stub: Any = eventstore_pb2_grpc.EventStoreServiceStub(channel)
        stub.CreateStoreTopic(pb.CreateStoreTopicRequest(topic="cli-orders", partitions=1))
        for i in range(12):
            support.append(stub, "cli-orders", f"order-{i % 3}", "OrderPlaced", i)
        db = tmp_path / "summary.db"
        support.summary.topic, support.summary.store = "cli-orders", SQLiteStore(db)
        ProjectionRunner(support.summary, server.address).run(until_caught_up=True)
        support.summary.store.close()
        live = support.orders(str(db))
        support.append(stub, "cli-orders", "order-0", "OrderPlaced", 100)

    code, out, err = moldau(server, "projections", "list")
    assert code == 0, err
    assert "replay-summary" in out
    assert "cli-orders" in out
    assert "caught-up" in out
    code, out, err = moldau(server, "projections", "status", "replay-summary", "--output",
                            "json")
    assert code == 0, err
    status = json.loads(out)
    assert status["lag"] == 1  # asked the broker now, not the runner's last record
    assert status["code"] == "tests.cli.test_replay_support:summary"
    assert status["store"] == f"sqlite:{db}"
    code, out, _ = moldau(server, "projections", "status", "replay-summary")
    assert "events applied: 12" in out
    assert moldau(server, "projections", "status", "nope")[0] == 1

    code, _, err = moldau(server, "projections", "reset", "replay-summary")
    assert code == 1
    assert "live runner" in err
    code, out, err = moldau(server, "projections", "reset", "replay-summary", "--force")
    assert code == 0, err
    assert support.orders(str(db)) == {}

    code, out, err = moldau(server, "projections", "rebuild", "replay-summary")
    assert code == 0, err
    rebuilt = support.orders(str(db))
    assert rebuilt["order-0"][0] == live["order-0"][0] + 100
    assert {k: v for k, v in rebuilt.items() if k != "order-0"} == {
        k: v for k, v in live.items() if k != "order-0"}
    code, out, _ = moldau(server, "projections", "list", "--output", "json")
    assert json.loads(out)[0]["state"] == "rebuilt"
