"""The free-space alert: is the data directory's file system running out of room?

Free space is *low* when it falls below the threshold, the larger of ``disk_free_alert_bytes``
and ``disk_free_alert_percent`` of the file system's size (either one at 0 leaves it out; both
at 0 turn the alert off). Crossing into low logs one WARNING; coming back logs one INFO, once
free space is :data:`RECOVERY_MARGIN` above the threshold, so a disk hovering at the threshold
does not log on every check. The metrics endpoint reports the state as ``moldau_disk_low``.

:class:`DiskSpaceMonitor` checks when asked (each Prometheus scrape) and, once started, every
:data:`CHECK_INTERVAL_S` on a daemon thread, so the WARNING comes even when nobody scrapes.

Concurrency: :meth:`DiskSpaceMonitor.check` may run on any thread; a lock orders the state
changes, so each crossing is logged exactly once.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc_api.config import ServerConfig

__all__ = ["CHECK_INTERVAL_S", "RECOVERY_MARGIN", "DiskSpace", "DiskSpaceMonitor"]

log = logging.getLogger(__name__)

#: Seconds between the background checks.
CHECK_INTERVAL_S = 10.0
#: Low ends once free space is this fraction of the threshold above it (hysteresis).
RECOVERY_MARGIN = 0.05

Usage = Callable[[Path], Any]  # shutil.disk_usage: an object with .total and .free


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """One reading of the data directory's file system."""

    free_bytes: int
    total_bytes: int
    threshold_bytes: int  # 0: the alert is off
    low: bool


class DiskSpaceMonitor:
    """Compares free space on ``path``'s file system with the alert threshold.

    Args:
        path: A directory on the file system to watch (the data directory).
        alert_bytes: Low below this many free bytes (0: no byte threshold).
        alert_percent: Low below this percentage of the file system free (0: none).
        usage: Reads the file system's usage; ``shutil.disk_usage`` (injectable for tests).
        interval_s: Seconds between background checks once :meth:`start` ran.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        alert_bytes: int,
        alert_percent: float,
        usage: Usage = shutil.disk_usage,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.alert_bytes = alert_bytes
        self.alert_percent = alert_percent
        self._usage = usage
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._low = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: ServerConfig) -> DiskSpaceMonitor:
        return cls(config.data_dir, alert_bytes=config.disk_free_alert_bytes,
                   alert_percent=config.disk_free_alert_percent)

    def threshold_bytes(self, total_bytes: int) -> int:
        """The free bytes below which space is low, for a file system of ``total_bytes``."""
        return max(self.alert_bytes, int(total_bytes * self.alert_percent / 100))

    @property
    def low(self) -> bool:
        """The state after the last check."""
        return self._low

    def check(self) -> DiskSpace | None:
        """Read the usage now, update the state, log a crossing; None if unreadable."""
        try:
            usage = self._usage(self.path)
        except OSError as exc:
            log.debug("cannot read the disk usage of %s: %s", self.path, exc)
            return None
        free, total = int(usage.free), int(usage.total)
        threshold = self.threshold_bytes(total)
        with self._lock:
            was_low = self._low
            if threshold <= 0:
                low = False
            elif was_low:
                low = free < threshold * (1 + RECOVERY_MARGIN)
            else:
                low = free < threshold
            self._low = low
        if low and not was_low:
            log.warning(
                "free disk space on %s is low: %s free of %s, below the alert threshold of %s "
                "(disk_free_alert_bytes / disk_free_alert_percent). When the disk is full, "
                "appends fail with RESOURCE_EXHAUSTED: free space, lower retention.ms or "
                "retention.bytes, delete topics, or add disk",
                self.path, _size(free), _size(total), _size(threshold),
            )
        elif was_low and not low:
            log.info("free disk space on %s has recovered: %s free, above the alert "
                     "threshold of %s", self.path, _size(free), _size(threshold))
        return DiskSpace(free, total, threshold, low)

    # ------------------------------------------------------------------ background checks

    def start(self) -> None:
        """Check now, then every ``interval_s`` on a daemon thread until :meth:`stop`."""
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="moldau-disk-space", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # a bug here must not end the checks for good
                log.exception("checking free disk space failed")


def _size(count: int) -> str:
    """Bytes for a log line: ``12.3 GiB (13207024435 bytes)``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count} bytes)"
    return f"{count} bytes"
