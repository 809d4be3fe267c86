"""Second language: the Node.js client in clients/node against a real broker.

Needs node and npm (Node 18+); installs the client's dependencies with ``npm ci`` when
``node_modules`` is missing. Without node the test fails: the contract is only proven
language-neutral if another language actually runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import moldau
from moldau.testing import RunningBroker, broker

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    executable, npm = shutil.which("node"), shutil.which("npm")
    if executable is None or npm is None:
        pytest.fail("node and npm are required for the interop test (install Node.js 18+)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
            text=True, timeout=600, check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return executable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with broker(data_dir=tmp_path_factory.mktemp("interop") / "data") as running:
        yield running


def test_node_creates_produces_and_fetches(node: str, server: RunningBroker) -> None:
    result = subprocess.run(
        [node, "demo.js", server.address, "from-node", "3"], cwd=NODE_DIR,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "fetched 3 records, high watermark 3"
    records = [json.loads(line) for line in lines[:-1]]
    assert [(r["offset"], r["key"], r["value"], r["headers"]) for r in records] == [
        (i, f"key-{i}", f"hello from node {i}", {"lang": "node"}) for i in range(3)
    ]
    # and the Python client reads what Node wrote
    with moldau.Consumer(server.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([("from-node", 0)])
        seen = consumer.poll(timeout_ms=5000)
    assert [(r.key, r.value) for r in seen] == [
        (f"key-{i}".encode(), f"hello from node {i}".encode()) for i in range(3)
    ]
    assert seen[0].headers == (moldau.Header("lang", b"node"),)


def test_node_reports_server_errors(node: str, server: RunningBroker) -> None:
    with moldau.Admin(server.address) as admin:
        admin.create_topic("taken")
    result = subprocess.run(
        [node, "demo.js", server.address, "taken"], cwd=NODE_DIR,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "status 6" in result.stderr
    assert "already exists" in result.stderr
