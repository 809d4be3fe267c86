"""The free-space alert of a real server (RELIABILITY-PLAN T10): gauge, threshold and log line.

The threshold is set above the machine's free space (the alert must fire) or far below it
(it must not); crossing back and forth is covered in process by
``tests/grpc_api/test_disk_space.py``.
"""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from grpc_api.testing import ServerProcess
from tests.integration.support import StartServer

_WARNING = "free disk space on"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _disk_samples(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("moldau_disk_")}


def _start(start_server: StartServer, alert_bytes: int) -> tuple[ServerProcess, int]:
    """A server with a metrics port whose alert threshold is ``alert_bytes`` free bytes."""
    port = _free_port()
    server = start_server(
        env={"MOLDAU_DISK_FREE_ALERT_BYTES": str(alert_bytes),
             "MOLDAU_DISK_FREE_ALERT_PERCENT": "0"},
        extra_args=["--metrics-listen", f"127.0.0.1:{port}"],
    )
    return server, port


def _wait_for_log(server: ServerProcess, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        log = server.log_text()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def test_threshold_above_free_space_raises_the_alert(
    start_server: StartServer, tmp_path: Path
) -> None:
    usage = shutil.disk_usage(tmp_path)
    threshold = usage.total  # free space is always below the file system's size
    server, port = _start(start_server, threshold)
    samples = _disk_samples(port)
    assert samples["moldau_disk_low"] == 1, samples
    assert samples["moldau_disk_free_alert_threshold_bytes"] == threshold
    assert 0 < samples["moldau_disk_free_bytes"] < threshold
    assert samples["moldau_disk_total_bytes"] == usage.total
    log = _wait_for_log(server, _WARNING, 10)
    warnings = [line for line in log.splitlines() if _WARNING in line]
    assert len(warnings) == 1, log  # once, however often it is checked or scraped
    assert " WARNING " in warnings[0]
    assert "is low" in warnings[0]
    assert f"({threshold} bytes)" in warnings[0]
    assert str(Path(server.data_dir)) in warnings[0]
    _disk_samples(port)  # another check: still low, no second warning
    assert server.log_text().count(_WARNING) == 1


def test_threshold_below_free_space_keeps_the_alert_off(start_server: StartServer) -> None:
    server, port = _start(start_server, 1)
    samples = _disk_samples(port)
    assert samples["moldau_disk_low"] == 0, samples
    assert samples["moldau_disk_free_alert_threshold_bytes"] == 1
    assert samples["moldau_disk_free_bytes"] > 1
    assert _WARNING not in server.log_text()


def test_the_alert_is_logged_without_a_metrics_endpoint(
    start_server: StartServer, tmp_path: Path
) -> None:
    threshold = shutil.disk_usage(tmp_path).total
    server = start_server(env={"MOLDAU_DISK_FREE_ALERT_BYTES": str(threshold),
                               "MOLDAU_DISK_FREE_ALERT_PERCENT": "0"})
    log = _wait_for_log(server, _WARNING, 10)
    assert log.count(_WARNING) == 1, log
