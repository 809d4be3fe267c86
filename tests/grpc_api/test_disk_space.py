"""The free-space alert in process: thresholds, crossings, logging once, the settings."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from grpc_api.config import ConfigError, ServerConfig, load_config
from grpc_api.disk_space import DiskSpaceMonitor

GIB = 1 << 30


class FakeDisk:
    """A file system whose free space the test sets; counts reads."""

    def __init__(self, free: int, total: int = 100 * GIB) -> None:
        self.free = free
        self.total = total
        self.reads = 0
        self.read_once = threading.Event()

    def __call__(self, path: Path) -> SimpleNamespace:
        self.reads += 1
        if self.reads > 1:
            self.read_once.set()
        return SimpleNamespace(free=self.free, total=self.total)


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "grpc_api.disk_space"]


@pytest.mark.parametrize(
    ("alert_bytes", "alert_percent", "total", "threshold"),
    [
        (GIB, 5.0, 100 * GIB, 5 * GIB),  # the percentage is larger
        (GIB, 5.0, 10 * GIB, GIB),  # the byte count is larger
        (GIB, 0.0, 100 * GIB, GIB),
        (0, 2.5, 100 * GIB, int(2.5 * GIB)),
        (0, 0.0, 100 * GIB, 0),  # off
    ],
)
def test_threshold_is_the_larger_of_bytes_and_percent(
    alert_bytes: int, alert_percent: float, total: int, threshold: int
) -> None:
    monitor = DiskSpaceMonitor("/x", alert_bytes=alert_bytes, alert_percent=alert_percent,
                               usage=FakeDisk(total, total))
    assert monitor.threshold_bytes(total) == threshold
    space = monitor.check()
    assert space is not None
    assert space.threshold_bytes == threshold


def test_crossings_log_once_each_way_with_hysteresis(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="grpc_api.disk_space")
    disk = FakeDisk(free=50 * GIB)
    monitor = DiskSpaceMonitor("/data", alert_bytes=10 * GIB, alert_percent=0, usage=disk)
    steps = [
        (50 * GIB, False),
        (10 * GIB, False),  # at the threshold is not below it
        (10 * GIB - 1, True),  # crosses: WARNING
        (2 * GIB, True),
        (10 * GIB + GIB // 4, True),  # above, but within the 5% margin: still low
        (11 * GIB, False),  # recovered: INFO
        (10 * GIB + GIB // 4, False),  # within the margin from above: not low again
        (GIB, True),  # crosses again: a second WARNING
    ]
    for free, expected in steps:
        disk.free = free
        space = monitor.check()
        assert space is not None
        assert (space.free_bytes, space.total_bytes) == (free, disk.total)
        assert space.low is expected, f"free {free}: low {space.low}"
        assert monitor.low is expected
    records = _records(caplog)
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO, logging.WARNING]
    warning, info = records[0][1], records[1][1]
    assert "/data" in warning
    assert "below the alert threshold of 10.0 GiB (10737418240 bytes)" in warning
    assert "10.0 GiB (10737418239 bytes) free" in warning
    assert "RESOURCE_EXHAUSTED" in warning
    assert "recovered: 11.0 GiB" in info


def test_alert_off_never_goes_low(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="grpc_api.disk_space")
    monitor = DiskSpaceMonitor("/d", alert_bytes=0, alert_percent=0, usage=FakeDisk(free=0))
    space = monitor.check()
    assert space is not None
    assert (space.low, space.threshold_bytes) == (False, 0)
    assert _records(caplog) == []


def test_an_unreadable_file_system_reports_nothing(tmp_path: Path) -> None:
    monitor = DiskSpaceMonitor(tmp_path / "gone", alert_bytes=GIB, alert_percent=5)
    assert monitor.check() is None
    assert monitor.low is False


def test_background_checks_run_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="grpc_api.disk_space")
    disk = FakeDisk(free=GIB // 2)
    monitor = DiskSpaceMonitor("/d", alert_bytes=GIB, alert_percent=0, usage=disk,
                               interval_s=0.01)
    monitor.start()  # the first check happens at once, on the caller's thread
    assert monitor.low is True
    assert [level for level, _ in _records(caplog)] == [logging.WARNING]
    try:
        assert disk.read_once.wait(5), "no background check within 5 s"
    finally:
        monitor.stop()
    reads = disk.reads
    threading.Event().wait(0.05)  # several intervals: a stopped monitor must not read again
    assert disk.reads == reads
    assert [level for level, _ in _records(caplog)] == [logging.WARNING]  # logged once


def test_settings_defaults_sources_and_checks(tmp_path: Path) -> None:
    config = ServerConfig()
    assert (config.disk_free_alert_bytes, config.disk_free_alert_percent) == (GIB, 5.0)
    path = tmp_path / "moldau.toml"
    path.write_text("disk_free_alert_bytes = 2048\ndisk_free_alert_percent = 7\n")
    from_file = load_config(path, environ={})
    assert (from_file.disk_free_alert_bytes, from_file.disk_free_alert_percent) == (2048, 7.0)
    assert isinstance(from_file.disk_free_alert_percent, float)
    from_env = load_config(environ={"MOLDAU_DISK_FREE_ALERT_BYTES": "0",
                                    "MOLDAU_DISK_FREE_ALERT_PERCENT": "0.5"})
    assert (from_env.disk_free_alert_bytes, from_env.disk_free_alert_percent) == (0, 0.5)
    monitor = DiskSpaceMonitor.from_config(from_env)
    assert (monitor.alert_bytes, monitor.alert_percent) == (0, 0.5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MOLDAU_DISK_FREE_ALERT_BYTES": "-1"}, "disk_free_alert_bytes must not be negative"),
        ({"MOLDAU_DISK_FREE_ALERT_BYTES": "1.5"}, "must be an integer"),
        ({"MOLDAU_DISK_FREE_ALERT_PERCENT": "101"}, "must be from 0 to 100, got 101"),
        ({"MOLDAU_DISK_FREE_ALERT_PERCENT": "-0.1"}, "must be from 0 to 100"),
        ({"MOLDAU_DISK_FREE_ALERT_PERCENT": "nan"}, "must be from 0 to 100"),
        ({"MOLDAU_DISK_FREE_ALERT_PERCENT": "five"},
         "MOLDAU_DISK_FREE_ALERT_PERCENT: disk_free_alert_percent must be a number"),
    ],
)
def test_bad_settings_name_the_problem(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_a_boolean_percent_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "moldau.toml"
    path.write_text("disk_free_alert_percent = true\n")
    with pytest.raises(ConfigError, match="disk_free_alert_percent must be a number"):
        load_config(path, environ={})
