"""A real broker subprocess shared by the client tests, and per-test topics."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from moldau import Admin
from moldau.testing import RunningBroker, broker

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with broker(data_dir=tmp_path_factory.mktemp("client") / "data") as running:
        yield running
    assert running.exit_code == 0, running.log_text()


@pytest.fixture(scope="session")
def address(server: RunningBroker) -> str:
    return server.address


@pytest.fixture
def new_topic(address: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``new_topic(partitions=1, configs=None)``: a topic unique to this test."""

    def create(partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        base = request.node.name.split("[")[0].removeprefix("test_")[:40]
        name = f"{base}-{next(_names)}"
        with Admin(address) as admin:
            admin.create_topic(name, partitions, {"durability": "async", **(configs or {})})
        return name

    return create


@pytest.fixture
def topic(new_topic: Callable[..., str]) -> str:
    return new_topic()
