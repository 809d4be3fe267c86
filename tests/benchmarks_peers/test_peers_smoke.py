"""Smoke test of the peer comparison (benchmarks/peers/run.py --quick): Moldau only, tiny counts.

The full comparison is not part of ``make test``; this checks that the script starts a
server, runs every workload, prints the table and writes the JSON (and the chart when
matplotlib is installed), and leaves no server behind.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_prints_table_and_writes_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers" / "run.py"), "--quick",
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workload | system | durability | records/s |" in done.stdout
    document = json.loads((tmp_path / "peers.json").read_text())
    rows = document["medians"]
    workloads = {row["workload"] for row in rows}
    assert {"produce 100 B", "consume 100 B", "produce 3p/6p", "consume 3c/6p"} <= workloads
    assert {row["variant"] for row in rows} == {"fsync", "async"}
    assert all(row["records_per_sec"] > 0 for row in rows)
    e2e = [row for row in rows if row["workload"].startswith("e2e")]
    assert e2e
    assert all(row["p99_ms"] is not None for row in e2e)
    assert not [run for run in document["runs"] if run.get("error")]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "peers.png").stat().st_size > 0
