"""Fixtures that run the broker as a real subprocess and talk to it over gRPC.

``server`` is one process shared by the whole session (tests use their own topics); tests that
stop, kill or reconfigure a server start their own with ``start_server``. The shared server
runs with small limits so the limit tests need no large payloads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2
from tests.integration.support import LIMITS, StartServer, Stubs, make_stubs


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server process, stopped (SIGTERM) at the end of the session."""
    process = ServerProcess(tmp_path_factory.mktemp("shared") / "data", env=LIMITS)
    process.start()
    yield process
    code = process.stop()
    assert code == 0, process.log_text()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start extra servers; each is stopped after the test unless the test ended it."""
    started: list[ServerProcess] = []

    def start(
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> ServerProcess:
        process = ServerProcess(
            data_dir or tmp_path / "data", env={**LIMITS, **(env or {})}, extra_args=extra_args
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def stubs(server: ServerProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(server.address) as channel:
        yield make_stubs(channel)


_names = itertools.count()


@pytest.fixture
def new_topic(stubs: Stubs, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Create a topic unique to this test: ``new_topic(partitions=1, **configs)``."""

    def create(partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        base = request.node.name.split("[")[0].removeprefix("test_")[:40]
        name = f"{base}-{next(_names)}"
        stubs.admin.CreateTopic(
            admin_pb2.CreateTopicRequest(name=name, partitions=partitions, configs=configs or {})
        )
        return name

    return create


@pytest.fixture
def topic(new_topic: Callable[..., str]) -> str:
    """A fresh one-partition topic."""
    return new_topic()
