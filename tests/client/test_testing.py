"""moldau.testing: the context manager in both modes, and the pytest plugin in a real run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import moldau
import moldau.testing


def test_in_process_broker(tmp_path: Path) -> None:
    with moldau.testing.broker(in_process=True, data_dir=tmp_path / "d") as running:
        with moldau.Admin(running.address) as admin:
            admin.create_topic("t")
        with moldau.Producer(running.address) as producer:
            assert producer.send("t", b"x").result(10).offset == 0
    assert running.exit_code == 0
    assert (tmp_path / "d" / "t-0").is_dir()


def test_pytest_plugin(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["moldau.testing"]\n')
    (tmp_path / "test_app.py").write_text(textwrap.dedent("""
        import moldau

        def test_app(moldau_broker, moldau_topic):
            with moldau.Producer(moldau_broker.address) as producer:
                assert producer.send(moldau_topic, b"hi").result(10).offset == 0
            with moldau.Consumer(moldau_broker.address, auto_offset_reset="earliest") as c:
                c.assign_all(moldau_topic)
                assert [r.value for r in c.poll(timeout_ms=5000)] == [b"hi"]
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
