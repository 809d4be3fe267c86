"""The checker finds each anomaly it claims to find (so a passing fault run means something)."""

from __future__ import annotations

from tests.faults.checker import History, check


def _history() -> History:
    history = History(idempotent_writers={"idem"})
    for offset in range(3):
        value = f"idem:{offset}".encode()
        history.attempted.add(value)
        history.acked[value] = ("idem", 0, offset)
        history.polled.append((0, offset, value))
    history.commits[0].append(3)
    return history


def _stored() -> dict[int, list[tuple[int, bytes]]]:
    return {0: [(o, f"idem:{o}".encode()) for o in range(3)]}


def test_a_clean_history_passes() -> None:
    result = check(_history(), _stored(), {0: 3})
    assert result.ok, result.anomalies
    assert (result.acknowledged, result.stored, result.lost, result.redelivered) == (3, 3, 0, 0)


def test_each_anomaly_is_found() -> None:
    history = _history()
    history.attempted.add(b"plain:0")
    history.restarts.append((0, 3, 2))
    history.committed_reads.append((0, 1, 3))
    history.polled.append((0, 5, b"idem:5"))  # skips 3 and 4
    stored = {0: [(0, b"idem:0"), (1, b"idem:2"), (3, b"idem:2"), (4, b"ghost:1"),
                  (5, b"plain:0"), (6, b"plain:0")]}
    result = check(history, stored, {0: 7})
    kinds = {a.kind for a in result.anomalies}
    assert kinds == {
        "hole", "duplicate", "unexpected", "lost", "inconsistent-offset",
        "offset-regression", "commit-regression", "unseen", "poll-skip",
    }
    assert result.lost == 1  # idem:1
    assert result.duplicates_by_writer == {"idem": 1, "plain": 1}


def test_plain_duplicates_are_counted_not_failed() -> None:
    history = _history()
    history.attempted.add(b"plain:0")
    stored = {0: [*_stored()[0], (3, b"plain:0"), (4, b"plain:0")]}
    history.polled += [(0, 3, b"plain:0"), (0, 4, b"plain:0")]
    result = check(history, stored, {0: 5})
    assert result.ok, result.anomalies
    assert result.duplicates_by_writer == {"plain": 1}
