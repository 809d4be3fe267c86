"""Run a real broker server in a subprocess, for integration tests and benchmarks.

The server binds port 0 (the kernel picks a free port, so parallel runs never collide) and
prints the address it got; :meth:`ServerProcess.start` reads that line, then waits until gRPC
health reports SERVING. The server's stderr goes to ``<data_dir>.server.log``, which
:meth:`ServerProcess.log_text` returns for failure messages.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ServerProcess", "wait_for_serving"]

_READY_PREFIX = "moldau serving on "


def wait_for_serving(address: str, timeout_s: float) -> None:
    """Block until the health service at ``address`` reports SERVING; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {address} did not report SERVING")
            time.sleep(0.05)


class ServerProcess:
    """``python -m grpc_api`` on a free loopback port with its own data directory.

    Args:
        data_dir: The broker's data directory (kept across restarts of this object).
        extra_args: More command-line flags, e.g. ``["--config", path]``.
        env: Extra environment variables (``MOLDAU_*`` settings).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args or []
        self.env = env or {}
        self.startup_timeout_s = startup_timeout_s
        self.address = ""
        #: ``HOST:PORT`` of the TCP port when started with ``--tcp-listen`` (else "").
        self.tcp_address = ""
        self.process: subprocess.Popen[str] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".server.log")
        self._log_file: IO[str] | None = None

    def start(self) -> str:
        """Spawn the server, wait for SERVING, and return its ``host:port``."""
        command = [
            sys.executable, "-m", "grpc_api", "--listen", "127.0.0.1:0",
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]
        self._log_file = self.log_path.open("a")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + self.startup_timeout_s
        line = self._read_ready_line(deadline)
        self.address = line[len(_READY_PREFIX):].split(" ", 1)[0]
        tcp = re.search(r"; tcp: (\S+)\)", line)
        self.tcp_address = tcp.group(1) if tcp else ""
        wait_for_serving(self.address, max(1.0, deadline - time.monotonic()))
        return self.address

    def _read_ready_line(self, deadline: float) -> str:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.kill()
                    raise TimeoutError(f"server did not start:\n{self.log_text()}")
                line = process.stdout.readline()
                if not line:
                    code = process.wait()
                    self._close_files()
                    raise RuntimeError(f"server exited with {code}:\n{self.log_text()}")
                if line.startswith(_READY_PREFIX):
                    return line.strip()

    def log_text(self) -> str:
        """What the server wrote to stderr so far."""
        try:  # gRPC's core may log raw peer bytes: never fail on them
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        return self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL: the process dies without closing anything, like a crash."""
        return self._end(signal.SIGKILL, 30.0)

    def _end(self, signum: int, timeout_s: float) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signum)
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self._close_files()
        self.process = None
        return code

    def _close_files(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
