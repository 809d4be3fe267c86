"""Smoke test of the staged e2e trace (benchmarks/e2e_trace.py): a short run of each variant.

The tool wraps private broker methods to take its timestamps; this catches a rename that
would leave it measuring nothing, and checks that its stages add up to the total.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _table(stdout: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]), float(cells[3]))
    return rows


@pytest.mark.parametrize(("durability", "stages"), [
    ("fsync", {"append -> fsync start", "fsync", "fsync end -> push"}),
    ("async", {"append -> push"}),
])
def test_a_short_trace_times_every_stage(durability: str, stages: set[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e_trace.py"), "--durability", durability,
         "--seconds", "1.5", "--warmup-batches", "200"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table(done.stdout)
    common = {"send -> recv", "recv -> append", "push -> client put", "put -> poll return"}
    assert set(rows) == common | stages | {"total"}
    assert all(p50 > 0 for p50, _, _ in rows.values())
    # each batch's stages add up to its total, so the medians cannot exceed it by much
    assert sum(p50 for name, (p50, _, _) in rows.items() if name != "total") \
        < 2 * rows["total"][0]


def test_detail_splits_the_broker_stages() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e_trace.py"), "--durability", "async",
         "--seconds", "1.5", "--warmup-batches", "200", "--detail"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table(done.stdout)
    produce_steps = ["recv -> the handler has the bytes", "-> parsed, flow control (plan starts)",
                     "plan -> append"]
    push_steps = ["-> high watermark moves", "-> the subscriber's read starts", "read",
                  "read done -> push"]
    assert set(produce_steps + push_steps) <= set(rows)
    # the steps are parts of their stage: their medians add up to about the stage's
    for stage, steps in (("recv -> append", produce_steps), ("append -> push", push_steps)):
        assert sum(rows[step][0] for step in steps) < 2 * rows[stage][0] + 10
