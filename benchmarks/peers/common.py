"""The seam of the peer comparison: what every system implements, and the helpers they share.

A system has two halves, both :class:`typing.Protocol`s:

- :class:`PeerServer` lives in the orchestrating process: it installs its software when
  missing, starts the server on loopback (free ports, a temporary data directory, its own
  process group) and stops it again.
- :class:`PeerClient` is what ``start`` returns: a small picklable object (addresses and
  ports only) whose methods run *inside worker processes*, one per producer or consumer, so
  no two clients share an interpreter lock and no client state leaks from one system to the
  next. Every method first connects, then calls ``gate()`` (which reports "ready" and blocks
  until all workers of the run are ready), and only then starts its clock.

A *topic* is the system's unit of a named log (a Kafka/Moldau topic, a JetStream stream, a
Redis stream key per partition, a RabbitMQ queue per partition); partition ``p`` of topic
``t`` maps onto each system's own notion (see each module's docstring).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))

from moldau._histogram import Histogram  # noqa: E402  (after the path set-up above)

__all__ = [
    "REPO", "E2EJob", "Gate", "Histogram", "Job", "Part", "PeerClient", "PeerServer",
    "PeerUnavailable", "ServerGroup", "Variant", "apt_install", "due_stamp", "free_port",
    "latencies_us",
    "pace", "value_pool", "wait_until",
]

Gate = Callable[[], None]
DUE = struct.Struct(">q")  # e2e values start with their scheduled send time, ns since epoch


class PeerUnavailable(Exception):  # noqa: N818  (a condition, not a bug: reads best)
    """The system cannot be installed or started here; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Variant:
    """A durability setting of a system, e.g. Moldau ``fsync`` or Redis ``aof-always``."""

    name: str
    durability: str  # what is on disk when the client hears "acknowledged", for the table


@dataclass(frozen=True, slots=True)
class Job:
    """One worker's share of a throughput workload."""

    topic: str
    partitions: tuple[int, ...]
    records: int  # produce: records to send; consume: records to read (what was produced)
    record_size: int
    variant: Variant
    max_seconds: float  # stop early after this long, and be rated on what was done


@dataclass(frozen=True, slots=True)
class E2EJob:
    """End-to-end: a producer at a fixed rate, a consumer tailing the same partition."""

    topic: str
    rate: float
    records: int
    record_size: int
    variant: Variant
    timeout_s: float
    warmup_s: float = 0.0  # the first seconds are sent and consumed but not measured


@dataclass(frozen=True, slots=True)
class Part:
    """What one worker did: records and bytes between ``started`` and ``ended`` (monotonic)."""

    records: int
    bytes: int
    started: float
    ended: float
    per_partition: dict[int, int] = field(default_factory=dict)
    histogram: tuple[int, ...] = ()  # Histogram.to_list(), e2e consumers only


class PeerClient(Protocol):
    """Client half; picklable; every method runs in its own worker process."""

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None: ...

    def produce(self, job: Job, gate: Gate) -> Part: ...

    def consume(self, job: Job, gate: Gate) -> Part: ...

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part: ...

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part: ...


class PeerServer(Protocol):
    """Server half, in the orchestrating process."""

    system: str
    client_library: str

    def variants(self) -> list[Variant]: ...

    def ensure_installed(self) -> None:
        """Install what is missing; PeerUnavailable when that is impossible."""

    def start(self, workdir: Path) -> PeerClient:
        """Start on loopback with data under ``workdir``; return once it serves."""

    def prepare(self, client: PeerClient, variant: Variant) -> None:
        """Switch the running server to ``variant`` (most systems: nothing to do)."""

    def stop(self) -> None:
        """Stop everything ``start`` started; safe to call twice or after a failed start."""


# ---------------------------------------------------------------------- processes


class ServerGroup:
    """Server processes started in their own session, stopped as a whole process group."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, command: Sequence[str], log: Path,
              env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            )
        self.processes.append((name, process, log))
        return process

    def check_alive(self) -> None:
        for name, process, log in self.processes:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise PeerUnavailable(f"{name} exited with {process.returncode}: "
                                      + " | ".join(tail))

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM each group (newest first), SIGKILL what is left after ``timeout_s``."""
        for _name, process, _log in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)
            _signal_group(process, signal.SIGKILL)  # stragglers of the group, if any
            if process.poll() is None:
                process.wait(5)
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def apt_install(package: str, binary: str) -> str | None:
    """``apt-get install`` ``package``; the path of ``binary`` afterwards, or None."""
    if shutil.which("apt-get") is None:
        return None
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True,
                          env=environment, timeout=900, check=False)
    return shutil.which(binary) if done.returncode == 0 else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str,
               alive: Callable[[], None] | None = None) -> None:
    """Poll ``ready`` until it returns True; PeerUnavailable after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            if ready():
                return
        except Exception as exc:  # not ready yet: connection refused, still booting
            last_error = f" (last error: {type(exc).__name__}: {exc})"[:300]
        time.sleep(0.2)
    raise PeerUnavailable(f"{what} not ready after {timeout_s:.0f} s{last_error}")


# ---------------------------------------------------------------------- workload data


def value_pool(record_size: int, count: int = 10_000, seed: int = 7) -> list[bytes]:
    """``count`` random values, cycled through by producers (incompressible, like real data)."""
    generator = random.Random(seed)
    distinct = [generator.randbytes(record_size) for _ in range(min(count, 1024))]
    return [distinct[i % len(distinct)] for i in range(count)]


#: Values due before this monotonic time are warm-up: stamped negative, left out of latencies.
#: Set by :func:`pace`, which each e2e producer process calls once before sending.
_measure_from = 0.0


def pace(rate: float, records: int, start: float,
         warmup_s: float = 0.0) -> list[tuple[float, int]]:
    """The e2e schedule: ``(due monotonic time, records)`` chunks, about one per millisecond.

    The chunks due in the first ``warmup_s`` seconds are warm-up (see :func:`e2e_values`).
    """
    global _measure_from  # noqa: PLW0603  (one schedule per producer process)
    _measure_from = start + warmup_s
    chunk = max(1, int(rate / 1000))
    schedule = []
    sent = 0
    while sent < records:
        count = min(chunk, records - sent)
        schedule.append((start + sent / rate, count))
        sent += count
    return schedule


def due_stamp(due_monotonic: float) -> bytes:
    """The wall-clock form of a scheduled send time, to put at the front of a value."""
    return DUE.pack(time.time_ns() - int((time.monotonic() - due_monotonic) * 1e9))


def latencies_us(values: Sequence[bytes], now_ns: int) -> list[int]:
    """Latency of each e2e value, from its scheduled send time to ``now_ns``; warm-up values
    (negative stamps) are left out."""
    unpack = DUE.unpack_from
    stamps = [unpack(v)[0] for v in values]
    return [(now_ns - stamp) // 1000 for stamp in stamps if stamp >= 0]


def e2e_values(due_monotonic: float, count: int, record_size: int) -> list[bytes]:
    """``count`` values stamped with their scheduled send time, padded to ``record_size``;
    warm-up values (due before the measured window) carry the stamp negated."""
    stamp = due_stamp(due_monotonic)
    if due_monotonic < _measure_from:
        stamp = DUE.pack(-DUE.unpack(stamp)[0])
    value = stamp + b"x" * max(0, record_size - DUE.size)
    return [value] * count
