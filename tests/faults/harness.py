"""What the fault tests share: the run mode, seeds, a restartable server, file damage helpers.

Mode: ``MOLDAU_FAULTS=nightly`` selects the long mode (more cycles, longer pauses); anything
else (or unset) is the CI mode. ``MOLDAU_SEED`` reruns a failing run: every test prints its
seed in its failure message.

The server under test is a real ``python -m grpc_api`` process (:class:`ServerProcess`) bound
to one fixed loopback port for the whole test, so clients created once reconnect to every
restarted incarnation by themselves, as they would to a restarted broker in production.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from engine.log.files import LOG_SUFFIX
from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, admin_pb2_grpc, common_pb2

__all__ = [
    "MODE",
    "SCALE",
    "FaultServer",
    "Scale",
    "active_segment",
    "batch_spans",
    "log_end_offsets",
    "make_rng",
    "sealed_segments",
]

MODE = "nightly" if os.environ.get("MOLDAU_FAULTS", "").lower() == "nightly" else "ci"


@dataclass(frozen=True, slots=True)
class Scale:
    """How hard a run pushes, by mode."""

    kill_cycles: int
    uptime_s: tuple[float, float]  # a kill comes this long after a restart (uniform)
    pause_s: tuple[float, float]  # SIGSTOP length
    disconnect_rounds: int
    bitflip_trials: int
    fuzz_seconds: float
    fuzz_min_requests: int


SCALE = {
    "ci": Scale(12, (0.2, 1.5), (0.5, 2.0), 6, 6, 60.0, 10_000),
    "nightly": Scale(60, (0.2, 3.0), (5.0, 30.0), 50, 60, 900.0, 200_000),
}[MODE]
if "MOLDAU_FUZZ_SECONDS" in os.environ:  # a shorter or longer fuzz run, same checks
    SCALE = replace(SCALE, fuzz_seconds=float(os.environ["MOLDAU_FUZZ_SECONDS"]),
                    fuzz_min_requests=0)


def make_rng(name: str) -> tuple[int, random.Random]:
    """A seed (``MOLDAU_SEED`` or fresh) and its generator; put the seed in every message."""
    seed = int(os.environ.get("MOLDAU_SEED", str(random.randrange(2**32))))
    return seed, random.Random(f"{name}:{seed}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultServer:
    """A broker on a fixed port that can be killed, torn, paused and restarted."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {"MOLDAU_LOG_LEVEL": "WARNING", **(env or {})}
        self.process: ServerProcess | None = None
        self.restart_seconds: list[float] = []

    def start(self) -> None:
        started = time.monotonic()
        for attempt in range(50):  # the port of a killed server can linger for a moment
            process = ServerProcess(
                self.data_dir, extra_args=["--listen", self.address], env=self.env
            )
            try:
                process.start()
            except RuntimeError as exc:
                if "cannot listen" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
                continue
            self.process = process
            break
        self.restart_seconds.append(time.monotonic() - started)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def stop(self) -> int:
        if self.process is None:
            return 0
        code = self.process.stop()
        self.process = None
        return code

    def pause(self, seconds: float) -> None:
        """SIGSTOP, wait, SIGCONT: the process is frozen with its connections open."""
        assert self.process is not None
        assert self.process.process is not None
        pid = self.process.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def alive(self) -> bool:
        return (
            self.process is not None
            and self.process.process is not None
            and self.process.process.poll() is None
        )

    def log_text(self) -> str:
        return self.process.log_text() if self.process is not None else (
            self.data_dir.with_name(self.data_dir.name + ".server.log").read_text()
            if self.data_dir.with_name(self.data_dir.name + ".server.log").exists() else ""
        )


def log_end_offsets(address: str, topic: str, partitions: int) -> dict[int, int]:
    """ListOffsets LATEST per partition (the high watermark)."""
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply = stub.ListOffsets(
            admin_pb2.ListOffsetsRequest(
                topic=topic,
                partitions=list(range(partitions)),
                spec=common_pb2.OffsetSpec(kind=common_pb2.OffsetSpec.LATEST),
            ),
            timeout=10,
        )
    return {p.partition: p.high_watermark for p in reply.offsets}


# ---------------------------------------------------------------------- segment files

_BATCH_PREFIX = struct.Struct(">qi")  # baseOffset, batchLength (RecordBatch v2)
_LAST_OFFSET_DELTA = 23  # byte position of lastOffsetDelta inside a batch


def _segments(partition_dir: Path) -> list[Path]:
    return sorted(partition_dir.glob(f"*{LOG_SUFFIX}"))


def active_segment(partition_dir: Path) -> Path:
    return _segments(partition_dir)[-1]


def sealed_segments(partition_dir: Path) -> list[Path]:
    return _segments(partition_dir)[:-1]


def batch_spans(path: Path) -> list[tuple[int, int, int, int]]:
    """``(position, end position, base offset, last offset)`` of each whole batch in a file.

    Stops at the first prefix that does not fit (a torn tail).
    """
    data = path.read_bytes()
    spans = []
    position = 0
    while position + 27 <= len(data):
        base_offset, length = _BATCH_PREFIX.unpack_from(data, position)
        end = position + 12 + length
        if length < 49 or end > len(data):
            break
        (delta,) = struct.unpack_from(">i", data, position + _LAST_OFFSET_DELTA)
        spans.append((position, end, base_offset, base_offset + delta))
        position = end
    return spans


def data_end(path: Path) -> int:
    """Where the batches of a segment file end: its size, less the space preallocated past
    them (``segment.preallocate.bytes``) that a crash leaves as zeros."""
    spans = batch_spans(path)
    return spans[-1][1] if spans else 0
