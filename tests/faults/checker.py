"""An offline checker for histories recorded under faults, in the spirit of Jepsen's.

The harness records what clients were told (:class:`History`); after the run, :func:`check`
compares it with what the recovered broker serves and returns every anomaly found:

- ``lost``: a write acknowledged OK is not in the final read;
- ``duplicate``: a value stored more than once (an anomaly for idempotent producers; counted
  and reported for plain producers, whose retries may duplicate);
- ``inconsistent-offset``: the acknowledged offset holds another value (or none);
- ``unexpected``: a stored value no client ever tried to write;
- ``hole``: the offsets read back are not contiguous from the log start;
- ``offset-regression``: a partition's log end offset after a restart is below an offset
  already acknowledged, or below the one seen before the restart;
- ``commit-regression``: a group's committed offset went below one it acknowledged;
- ``unseen``: an offset below the high watermark that the live consumer group never polled;
- ``poll-skip``: a consumer jumped forward past offsets it had not polled yet;
- ``ack-undone``: a work-queue message delivered again after its Ack was confirmed.

Values are unique per write attempt (``<writer>:<sequence>``), so each record is traceable.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Anomaly", "CheckResult", "History", "check"]


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str
    detail: str


@dataclass(slots=True)
class History:
    """What the clients observed. Thread-safe enough: each list is appended by one thread."""

    #: value -> (writer, partition, offset) for writes acknowledged OK.
    acked: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)
    #: values whose write failed or has an unknown outcome (may or may not be stored).
    attempted: set[bytes] = field(default_factory=set)
    #: writers whose duplicates are anomalies (idempotent producers).
    idempotent_writers: set[str] = field(default_factory=set)
    #: (partition, offset, value) polled by the live consumer group, in poll order per thread.
    polled: list[tuple[int, int, bytes]] = field(default_factory=list)
    #: partition -> offsets of acknowledged commits, in order.
    commits: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: (partition, committed offset read back after a restart, highest commit acknowledged
    #: before that restart): the first must never be below the second.
    committed_reads: list[tuple[int, int, int]] = field(default_factory=list)
    #: (partition, 1 + highest offset acknowledged or polled before a kill, log end offset
    #: after the restart).
    restarts: list[tuple[int, int, int]] = field(default_factory=list)
    #: (partition, offset) of queue messages whose Ack the broker confirmed.
    queue_acked: set[tuple[int, int]] = field(default_factory=set)
    #: (partition, offset) of queue messages whose Ack failed without an answer (a kill
    #: between applying the Ack and replying): acked or not, the broker decides.
    queue_ack_unknown: set[tuple[int, int]] = field(default_factory=set)
    #: deliveries of messages already in ``queue_acked``.
    queue_undone: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class CheckResult:
    anomalies: list[Anomaly]
    acknowledged: int
    stored: int
    lost: int
    duplicates_by_writer: Counter[str]
    redelivered: int

    @property
    def ok(self) -> bool:
        return not self.anomalies


def _writer(value: bytes) -> str:
    return value.split(b":", 1)[0].decode(errors="replace")


def check(
    history: History,
    stored: dict[int, list[tuple[int, bytes]]],
    high_watermarks: dict[int, int],
    *,
    log_start_offsets: dict[int, int] | None = None,
    check_group: bool = True,
    limit: int = 20,
) -> CheckResult:
    """Compare ``history`` with ``stored`` (partition -> [(offset, value)] read after recovery).

    ``limit`` caps the anomalies kept per kind, so a broken run stays readable.
    """
    anomalies: list[Anomaly] = []
    per_kind: Counter[str] = Counter()

    def report(kind: str, detail: str) -> None:
        per_kind[kind] += 1
        if per_kind[kind] <= limit:
            anomalies.append(Anomaly(kind, detail))

    starts = log_start_offsets or {}
    where: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for partition, rows in stored.items():
        expected = starts.get(partition, 0)
        for offset, value in rows:
            if offset != expected:
                report("hole", f"partition {partition}: offset {offset} read, {expected} expected")
            expected = offset + 1
            where[value].append((partition, offset))
        if expected != high_watermarks.get(partition, expected):
            report("hole", f"partition {partition}: read up to {expected}, "
                   f"high watermark {high_watermarks[partition]}")
    duplicates: Counter[str] = Counter()
    for value, places in where.items():
        if len(places) > 1:
            writer = _writer(value)
            duplicates[writer] += len(places) - 1
            if writer in history.idempotent_writers:
                report("duplicate", f"{value!r} stored at {places}")
        if value not in history.acked and value not in history.attempted:
            report("unexpected", f"{value!r} at {places} was never written")
    lost = 0
    for value, (_, partition, offset) in history.acked.items():
        found = where.get(value)
        if not found:
            lost += 1
            report("lost", f"{value!r} acknowledged at {partition}/{offset} is not stored")
        elif (partition, offset) not in found:
            report("inconsistent-offset",
                   f"{value!r} acknowledged at {partition}/{offset}, stored at {found}")
    for partition, before, after in history.restarts:
        if after < before:
            report("offset-regression", f"partition {partition}: offsets up to {before} were "
                   f"acknowledged or polled before a restart, log end {after} after it")
    for partition, seen, floor in history.committed_reads:
        if seen < floor:
            report("commit-regression", f"partition {partition}: committed {seen} read after "
                   f"a restart, below the acknowledged commit {floor}")
    for partition, offsets in history.commits.items():
        best = max(offsets, default=0)
        if best > high_watermarks.get(partition, best):
            report("commit-regression", f"partition {partition}: committed {best} beyond the "
                   f"high watermark {high_watermarks[partition]}")
    for partition, offset in history.queue_undone:
        report("ack-undone", f"queue message {partition}/{offset} delivered again after its "
               "ack was confirmed")
    redelivered = 0
    if check_group:
        redelivered = _check_group(history, high_watermarks, starts, report)
    return CheckResult(
        anomalies,
        acknowledged=len(history.acked),
        stored=sum(len(rows) for rows in stored.values()),
        lost=lost,
        duplicates_by_writer=duplicates,
        redelivered=redelivered,
    )


def _check_group(
    history: History,
    high_watermarks: dict[int, int],
    starts: dict[int, int],
    report: Callable[[str, str], None],
) -> int:
    polled_offsets: dict[int, Counter[int]] = defaultdict(Counter)
    last: dict[int, int] = {}
    for partition, offset, _ in history.polled:
        previous = last.get(partition)
        seen = polled_offsets[partition]
        if previous is not None and offset > previous + 1:
            missing = [o for o in range(previous + 1, offset) if o not in seen]
            if missing:
                report("poll-skip", f"partition {partition}: polled {offset} after {previous}, "
                       f"never polled {missing[:5]}")
        seen[offset] += 1
        last[partition] = offset
    redelivered = 0
    for partition, hw in high_watermarks.items():
        seen = polled_offsets.get(partition, Counter())
        unseen = [o for o in range(starts.get(partition, 0), hw) if o not in seen]
        if unseen:
            report("unseen", f"partition {partition}: {len(unseen)} offsets never polled by the "
                   f"group, first {unseen[:5]}")
        redelivered += sum(count - 1 for count in seen.values())
    return redelivered
