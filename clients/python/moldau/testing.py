"""Test against the real broker: a server on a temp directory and a free loopback port.

Context manager::

    with moldau.testing.broker() as b:
        producer = moldau.Producer(b.address)

pytest: enable the plugin with ``pytest_plugins = ["moldau.testing"]`` in your root
``conftest.py`` and use the fixtures ``moldau_broker`` (one server per test session) and
``moldau_topic`` (a fresh one-partition topic per test)::

    def test_orders(moldau_broker, moldau_topic):
        with moldau.Producer(moldau_broker.address) as producer:
            producer.send(moldau_topic, b"hello").result()

By default the server runs as a subprocess (``python -m grpc_api``), exactly as in production,
and a crash in it cannot take the tests down; ``in_process=True`` runs it on a thread of the
test process instead, which starts faster and can be debugged with breakpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moldau.admin import Admin

__all__ = ["RunningBroker", "broker"]  # plus the fixtures moldau_broker and moldau_topic

_READY_PREFIX = "moldau serving on "


class RunningBroker:
    """A started broker: ``address`` (``127.0.0.1:PORT``) and its ``data_dir``;
    ``tcp_address`` is its TCP port (``broker(tcp=True)``), else ""."""

    def __init__(self, address: str, data_dir: Path, stop: Callable[[], int],
                 log_path: Path | None, tcp_address: str = "") -> None:
        self.address = address
        self.tcp_address = tcp_address
        self.data_dir = data_dir
        self._stop = stop
        self._log_path = log_path
        self.exit_code: int | None = None

    def stop(self) -> int:
        """Shut the broker down gracefully; returns its exit code (idempotent)."""
        if self.exit_code is None:
            self.exit_code = self._stop()
        return self.exit_code

    def log_text(self) -> str:
        """What a subprocess broker wrote to stderr (empty in-process)."""
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text()
        except OSError:
            return ""


def _wait_serving(address: str, deadline: float, alive: Callable[[], bool]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the broker at {address} did not report SERVING")
            time.sleep(0.02)


def _start_subprocess(
    data_dir: Path, env: dict[str, str], extra_args: list[str], timeout_s: float
) -> RunningBroker:
    log_path = data_dir.with_name(data_dir.name + ".server.log")
    log_file: IO[str] = log_path.open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "grpc_api", "--listen", "127.0.0.1:0", "--data-dir",
         str(data_dir), *extra_args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, "MOLDAU_LOG_LEVEL": "WARNING", **env},
    )
    assert process.stdout is not None
    stdout = process.stdout

    def stop() -> int:
        if process.poll() is None:
            process.terminate()
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        stdout.close()
        log_file.close()
        return code

    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            line = stdout.readline() if remaining > 0 and selector.select(remaining) else None
            if not line:
                stop()
                raise RuntimeError(f"the broker did not start:\n{log_path.read_text()}")
            if line.startswith(_READY_PREFIX):
                break
    address = line[len(_READY_PREFIX):].split(" ", 1)[0]
    tcp = re.search(r"; tcp: (\S+)\)", line)
    _wait_serving(address, deadline, lambda: process.poll() is None)
    return RunningBroker(address, data_dir, stop, log_path, tcp.group(1) if tcp else "")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_in_process(data_dir: Path, timeout_s: float, tcp: bool) -> RunningBroker:
    # the server package only in-process: a subprocess broker needs only the interpreter
    from grpc_api.config import ServerConfig  # noqa: PLC0415
    from grpc_api.server import serve  # noqa: PLC0415

    address = f"127.0.0.1:{_free_port()}"
    tcp_address = f"127.0.0.1:{_free_port()}" if tcp else ""
    config = ServerConfig(listen=address, data_dir=str(data_dir), log_level="WARNING",
                          tcp_listen=tcp_address)
    loop = asyncio.new_event_loop()
    stop_event: asyncio.Event | None = None
    result: list[int] = []

    async def run() -> None:
        nonlocal stop_event
        stop_event = asyncio.Event()
        result.append(await serve(config, stop_event))

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),),
                              name="moldau-test-broker", daemon=True)
    thread.start()

    def stop() -> int:
        if stop_event is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop_event.set)
        thread.join(30)
        loop.close()
        return result[0] if result else 1

    try:
        _wait_serving(address, time.monotonic() + timeout_s, thread.is_alive)
    except RuntimeError:
        stop()
        raise
    return RunningBroker(address, data_dir, stop, None, tcp_address)


@contextlib.contextmanager
def broker(
    *,
    data_dir: str | Path | None = None,
    in_process: bool = False,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    startup_timeout_s: float = 30.0,
    tcp: bool = False,
) -> Iterator[RunningBroker]:
    """Run a broker for the duration of the ``with`` block.

    Args:
        data_dir: Where the broker keeps its data; a temporary directory (deleted afterwards)
            by default.
        in_process: Run on a thread of this process instead of a subprocess.
        env: ``MOLDAU_*`` server settings for a subprocess broker (e.g. limits).
        extra_args: More ``moldau serve`` flags for a subprocess broker.
        startup_timeout_s: How long to wait for the broker to report SERVING.
        tcp: Also open the TCP port (``--tcp-listen`` on a free loopback port); its address
            is ``tcp_address`` (docs/tcp-port.md).
    """
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="moldau-test-"))) / "data"
        data_dir = Path(data_dir)
        if in_process:
            running = _start_in_process(data_dir, startup_timeout_s, tcp)
        else:
            args = [*(extra_args or []), *(["--tcp-listen", "127.0.0.1:0"] if tcp else [])]
            running = _start_subprocess(data_dir, env or {}, args, startup_timeout_s)
        try:
            yield running
        finally:
            running.stop()


# ---------------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # pragma: no cover  (the context manager works without pytest)
    pass
else:
    _topic_names = itertools.count()

    @pytest.fixture(scope="session")
    def moldau_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
        """A real broker subprocess shared by the test session."""
        with broker(data_dir=tmp_path_factory.mktemp("moldau") / "data") as running:
            yield running

    @pytest.fixture
    def moldau_topic(moldau_broker: RunningBroker, request: pytest.FixtureRequest) -> str:
        """A new one-partition topic named after the test."""
        base = request.node.name.split("[")[0].removeprefix("test_")[:40]
        name = "".join(c if c.isalnum() or c in "._-" else "-" for c in base)
        name = f"{name}-{next(_topic_names)}"
        with Admin(moldau_broker.address) as admin:
            admin.create_topic(name, 1)
        return name
