"""Run a workload's parts in worker processes that start their clocks together.

Each part runs in a fresh ``spawn`` process: it connects, reports ready, and waits for the
go signal that the parent gives once every part is ready, so neither interpreter start-up
nor connection set-up is measured. Throughput is total records over the span from the
earliest start to the latest end of all parts (clocks are ``time.monotonic``, which is one
system-wide clock on Linux).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from typing import Any

from common import E2EJob, Job, Part, PeerClient

__all__ = ["WorkerError", "run_parts"]

_READY_TIMEOUT_S = 120.0


class WorkerError(RuntimeError):
    """A worker process failed or did not report in time."""


def _worker(client: PeerClient, method: str, job: Job | E2EJob, index: int,
            channel: Any, go: Any) -> None:
    def gate() -> None:
        channel.put((index, "ready", None))
        if not go.wait(_READY_TIMEOUT_S):
            raise TimeoutError("no go signal")

    try:
        part = getattr(client, method)(job, gate)
        channel.put((index, "done", part))
    except BaseException:  # reported to the parent, which decides
        channel.put((index, "error", traceback.format_exc(limit=6)))


def run_parts(client: PeerClient, parts: list[tuple[str, Job | E2EJob]],
              timeout_s: float) -> list[Part]:
    """Run ``(method, job)`` parts of one workload together; their Parts in the same order."""
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    go = context.Event()
    processes = [
        context.Process(target=_worker, args=(client, method, job, index, channel, go),
                        daemon=True)
        for index, (method, job) in enumerate(parts)
    ]
    results: dict[int, Part] = {}
    try:
        for process in processes:
            process.start()
        ready = 0
        deadline = run_deadline = time.monotonic() + _READY_TIMEOUT_S
        while len(results) < len(parts):
            remaining = (deadline if ready < len(parts) else run_deadline) - time.monotonic()
            try:
                index, tag, payload = channel.get(timeout=max(0.1, remaining))
            except queue.Empty:
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if remaining <= 0 or dead:
                    raise WorkerError(f"workers did not finish in time (exit codes {dead})"
                                      ) from None
                continue
            if tag == "error":
                raise WorkerError(f"worker {index} ({parts[index][0]}) failed:\n{payload}")
            if tag == "ready":
                ready += 1
                if ready == len(parts):
                    go.set()
                    run_deadline = time.monotonic() + timeout_s
            else:
                results[index] = payload
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return [results[i] for i in range(len(parts))]


def span(parts: list[Part]) -> float:
    """Seconds from the first part's start to the last part's end."""
    return max(p.ended for p in parts) - min(p.started for p in parts)
