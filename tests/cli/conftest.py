"""A real broker for the CLI tests, and a helper that runs ``moldau`` in process."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from moldau.cli import main
from moldau.testing import RunningBroker, broker


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with broker(data_dir=tmp_path_factory.mktemp("cli") / "data") as running:
        yield running


@pytest.fixture
def moldau(server: RunningBroker, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``moldau("topics", "list", stdin="...")`` against the test broker (via MOLDAU_SERVER)."""
    monkeypatch.setenv("MOLDAU_SERVER", server.address)

    def run(*argv: str, stdin: str = "") -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    return run
