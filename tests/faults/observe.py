"""What the fault tests observe of a live server process: memory, connections, logged errors.

Memory, descriptors and connections are read from ``/proc`` (Linux). ``VmRSS`` is what the
memory bounds of the reliability plan are stated in; it includes the file-backed pages the
process has mapped (``RssFile``: libraries, index files), so ``RssAnon`` and ``RssFile`` are
printed alongside to tell a heap that grows from a mapping that is paged in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "MIB",
    "Memory",
    "RssSampler",
    "error_records",
    "memory_of",
    "open_fds",
    "peer_ports",
    "read_log",
]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Memory:
    """One reading, in MiB."""

    rss: float
    anon: float
    file: float

    def __str__(self) -> str:
        return f"{self.rss:.0f} MiB (anon {self.anon:.0f}, file {self.file:.0f})"


def memory_of(pid: int) -> Memory:
    """The process's resident memory now; OSError when it is gone."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) / 1024  # the kernel reports kB
    return Memory(values["VmRSS"], values.get("RssAnon", 0.0), values.get("RssFile", 0.0))


def open_fds(pid: int) -> int:
    """File descriptors the process holds (sockets included)."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def peer_ports(pid: int, local_port: int) -> set[int]:
    """Remote ports of the TCP connections the process holds on ``local_port`` (accepted ones).

    Joins the process's socket descriptors (``socket:[inode]``) with ``/proc/net/tcp{,6}``.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


class RssSampler:
    """Reads a process's memory every ``interval_s`` on a thread and keeps the highest reading.

    Use as a context manager; :attr:`peak` is valid inside and after the block. The kernel's
    own high-water mark (``VmHWM``) is not used because it cannot be reset between phases.
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = memory_of(pid)
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> Memory:
        """Take a reading now (also called by the thread)."""
        try:
            now = memory_of(self.pid)
        except OSError:  # the process ended; the caller's liveness check reports that
            return self.peak
        self.samples += 1
        if now.rss > self.peak.rss:
            self.peak = now
        return now

    def reset(self) -> None:
        """Start a new phase: forget the peak so far."""
        self.peak = memory_of(self.pid)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def read_log(log_path: Path) -> str:
    """A server's log (``ServerProcess.log_path``), bytes that are not UTF-8 replaced: gRPC's
    core writes what peers send (GOAWAY debug data) into it raw."""
    try:
        return log_path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def error_records(log: str) -> list[str]:
    """The ERROR and CRITICAL records of a server's text log, each with its continuation lines
    (a traceback), plus any traceback printed outside a record."""
    records: list[str] = []
    current: list[str] | None = None
    for line in log.splitlines():
        if line[:4].isdigit() and line.count(" ") >= 3:  # a record starts with its timestamp
            if current is not None:
                records.append("\n".join(current))
            current = [line] if line.split(" ", 3)[2] in ("ERROR", "CRITICAL") else None
        elif current is not None:
            current.append(line)
        elif "Traceback" in line:
            records.append(line)
    if current is not None:
        records.append("\n".join(current))
    return records
