"""SIGKILL, torn writes and SIGSTOP pauses of a live broker under load (T1, T13 pauses).

One real server on a fixed port, a 4-partition topic with small segments (so kills land
during rolls too), and real clients running through every fault: an idempotent producer, a
plain producer (no idempotence; its retries may duplicate, which is counted), and a consumer
group member committing what it polled, and a work-queue consumer acking what it receives.
Each cycle, at a uniform-random moment under load,
injects one of:

- ``kill``: SIGKILL, restart;
- ``torn``: freeze (SIGSTOP) so every acknowledgement and fetch already sent reaches the
  clients, SIGKILL, then tear the active segment of a random partition past everything any
  client observed: truncate it at a random byte, or append a partial batch when nothing
  unobserved is left (what a crash mid-write leaves), and restart;
- ``pause``: SIGSTOP for a while, then SIGCONT; the same process carries on.

After the cycles the producers flush, the group catches up to the high watermarks, and a fresh
consumer group reads everything back; :func:`tests.faults.checker.check` then requires no lost
acknowledged record, no idempotent duplicate, no inconsistent offset, contiguous offsets, no
offset or committed-offset regression across restarts, no offset the group never polled, no
queue message delivered again after its ack was confirmed, and every message acked once the
queue drains.
Figures go to stderr (``-s``) and, on failure, with the seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

from moldau import Admin
from tests.faults.checker import History, check
from tests.faults.harness import (
    MODE,
    SCALE,
    FaultServer,
    active_segment,
    batch_spans,
    log_end_offsets,
    make_rng,
)
from tests.faults.workload import (
    GroupReader,
    ProducerLoad,
    QueueWorker,
    committed_offsets,
    read_all,
)

TOPIC = "faults"
PARTITIONS = 4
GROUP = "live"


def _observed_ends(history: History) -> dict[int, int]:
    """Per partition, 1 + the highest offset any client was told about."""
    ends = dict.fromkeys(range(PARTITIONS), 0)
    for _, partition, offset in list(history.acked.values()):
        ends[partition] = max(ends[partition], offset + 1)
    for partition, offset, _ in list(history.polled):
        ends[partition] = max(ends[partition], offset + 1)
    return ends


def _tear(partition_dir: Path, observed_end: int, rng: random.Random) -> tuple[int, bool]:
    """Damage the unobserved tail of the active segment; (bytes changed, left a partial batch)."""
    path = active_segment(partition_dir)
    spans = batch_spans(path)
    size = spans[-1][1] if spans else 0
    with path.open("r+b") as f:  # without the zeros preallocation reserved past the data
        f.truncate(size)
    keep = 0  # byte position past the last batch holding an observed offset
    for _, end, _, last_offset in spans:
        if last_offset < observed_end:
            keep = end
    boundaries = {end for _, end, _, _ in spans} | {0}
    if size > keep:
        cut = rng.randint(keep, size - 1)
        with path.open("r+b") as f:
            f.truncate(cut)
        return size - cut, cut not in boundaries
    if not spans:
        return 0, False
    position, end, _, _ = spans[-1]
    prefix = path.read_bytes()[position:end][: rng.randint(1, end - position - 1)]
    with path.open("ab") as f:
        f.write(prefix)
    return len(prefix), True


def test_kill_pause_tear_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed, rng = make_rng("kill-loop")
    server = FaultServer(tmp_path / "data")
    server.start()
    history = History()
    with Admin(server.address) as admin:
        admin.create_topic(TOPIC, PARTITIONS, {"segment.bytes": str(128 * 1024)})
    loads: list[ProducerLoad] = [
        ProducerLoad(server.address, TOPIC, "idem", history, idempotent=True),
        ProducerLoad(server.address, TOPIC, "plain", history, idempotent=False),
    ]
    reader = GroupReader(server.address, TOPIC, GROUP, history)
    queue = QueueWorker(server.address, TOPIC, "work", history)
    for load in loads:
        load.start()
    reader.start()
    queue.start()
    faults: list[str] = []
    torn_bytes = partial_tails = 0
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    try:
        for _ in range(SCALE.kill_cycles):
            time.sleep(rng.uniform(*SCALE.uptime_s))
            fault = rng.choices(["kill", "torn", "pause"], [0.5, 0.3, 0.2])[0]
            faults.append(fault)
            if fault == "pause":
                server.pause(rng.uniform(*SCALE.pause_s))
                continue
            if fault == "torn":
                _freeze_and_drain(server, reader)
            server.kill()
            observed = _observed_ends(history)
            if fault == "torn":
                partition = rng.randrange(PARTITIONS)
                changed, partial = _tear(
                    server.data_dir / f"{TOPIC}-{partition}", observed[partition], rng
                )
                torn_bytes += changed
                partial_tails += partial
            floor = {p: max(offsets, default=0) for p, offsets in history.commits.items()}
            server.start()
            after = log_end_offsets(server.address, TOPIC, PARTITIONS)
            history.restarts.extend((p, observed[p], after[p]) for p in range(PARTITIONS))
            committed = committed_offsets(server.address, GROUP)
            history.committed_reads.extend(
                (p, committed.get(p, 0), best) for p, best in floor.items()
            )
        for load in loads:
            load.stop()
        ends = log_end_offsets(server.address, TOPIC, PARTITIONS)
        deadline = time.monotonic() + 120
        while not reader.caught_up(ends):
            stuck = time.monotonic() >= deadline or bool(reader.crash)
            assert not stuck, (
                f"{at}: the group never caught up to {ends}: positions {reader.positions}, "
                f"poll/commit errors {reader.errors}, committed "
                f"{committed_offsets(server.address, GROUP)}; consumer:\n  {reader.diagnose()}"
            )
            time.sleep(0.1)
        reader.stop()
        while not queue.drained(ends):
            if time.monotonic() > deadline:
                missing = queue.missing(ends)
                raise AssertionError(
                    f"{at}: the queue never drained to {ends}: {len(missing)} offsets never "
                    f"acked, first {missing[:10]}; receive errors {queue.errors}; "
                    f"{queue.describe()}"
                )
            time.sleep(0.1)
        queue.stop()
        stored = read_all(server.address, TOPIC, "verify", ends)
        result = check(history, stored, ends)
        log_text = server.log_text()
        torn_reports = len(re.findall(r"torn tail of \d+ bytes", log_text))
        duplicates = dict(result.duplicates_by_writer)
        counts = ", ".join(f"{k}={faults.count(k)}" for k in ("kill", "torn", "pause"))
        restart_s = sorted(server.restart_seconds)[len(server.restart_seconds) // 2]
        summary = (
            f"{at}: cycles={len(faults)} ({counts}) acked={result.acknowledged} "
            f"stored={result.stored} lost={result.lost} duplicates={duplicates} "
            f"redelivered={result.redelivered} torn_bytes={torn_bytes} "
            f"torn_tails_reported={torn_reports} restart_s_median={restart_s:.2f} "
            f"queue_acked={len(history.queue_acked)} "
            f"queue_ack_unanswered={len(history.queue_ack_unknown - history.queue_acked)}"
        )
        print(summary, file=sys.stderr)
        assert result.ok, f"{summary}\n" + "\n".join(
            f"{a.kind}: {a.detail}" for a in result.anomalies
        )
        assert result.acknowledged > 1_000, summary  # the load really ran
        assert not [f for f in (load.failures for load in loads) if f], summary
        assert torn_reports >= partial_tails, f"{summary}: a torn tail was not reported"
        assert "quarantined" not in log_text, f"{summary}: a tail cut was taken for corruption"
    finally:
        stops = [load.stop for load in loads] + [reader.stop, queue.stop]
        for stop in stops:
            with contextlib.suppress(Exception):  # cleanup after a failure already raised
                stop()
        server.stop()


def _freeze_and_drain(server: FaultServer, reader: GroupReader) -> None:
    """SIGSTOP the server until the clients received all it sent (then it is SIGKILLed)."""
    assert server.process is not None
    assert server.process.process is not None
    os.kill(server.process.process.pid, signal.SIGSTOP)
    time.sleep(0.3)  # acknowledgements and fetches already in the sockets arrive
    reader.wait_idle(quiet_s=0.3, timeout_s=5)
