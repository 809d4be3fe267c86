"""CI run of the atheris RecordBatch harness (``tests/fuzz/atheris_batch.py``, RELIABILITY-PLAN T7).

A few thousand coverage-guided executions from the seed corpus, in a subprocess (atheris
instruments modules as they are imported, which it cannot do to this process's). Nightly runs
the same harness for 1,000,000 executions (see the harness docstring). ``MOLDAU_SEED`` replays
a run: it is libFuzzer's ``-seed``. Crash inputs land in the test's temporary directory and
their path is in the failure message.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("atheris_batch.py")
RUNS = 5_000


def test_atheris_harness_finds_nothing_in_a_short_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is not installed: pip install -e '.[dev]' (atheris>=3.0)")
    seed = int(os.environ.get("MOLDAU_SEED", str(random.randrange(1, 2**31))))
    command = [sys.executable, str(HARNESS), f"-atheris_runs={RUNS}", f"-seed={seed}"]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stderr + done.stdout
    at = f"MOLDAU_SEED={seed}: {' '.join(command)} in {tmp_path}"
    assert done.returncode == 0, f"{at}\n{output[-4000:]}"
    done_runs = re.search(r"^Done (\d+) ", output, re.MULTILINE)
    assert done_runs is not None, f"{at}\n{output[-4000:]}"
    assert int(done_runs.group(1)) >= RUNS, at
    assert not list(tmp_path.glob("crash-*")), at
