"""Disk full and fsync failures injected through the FileIO seam (RELIABILITY-PLAN T10a)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from engine.config import TopicConfig
from engine.errors import DiskFullError, LogReadOnlyError
from engine.log.fileio import LogFile, OsFileIO
from engine.log.partition_log import PartitionLog

from .conftest import make_batch


class FaultyFile:
    """Wraps a LogFile; raises the armed errno on the next append or fsync."""

    def __init__(self, inner: LogFile, faults: FaultyIO) -> None:
        self._inner = inner
        self._faults = faults
        self.path = inner.path

    def size(self) -> int:
        return self._inner.size()

    def append(self, data: bytes | bytearray | memoryview) -> int:
        if self._faults.append_errno is not None:
            raise OSError(self._faults.append_errno, "injected")
        return self._inner.append(data)

    def pread(self, size: int, position: int) -> bytes:
        return self._inner.pread(size, position)

    def fsync(self) -> None:
        if self._faults.fsync_errno is not None:
            raise OSError(self._faults.fsync_errno, "injected fsync failure")
        self._inner.fsync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def preallocate(self, size: int) -> None:
        self._inner.preallocate(size)

    def trim(self) -> None:
        self._inner.trim()

    def close(self) -> None:
        self._inner.close()


class FaultyIO(OsFileIO):
    def __init__(self) -> None:
        self.append_errno: int | None = None
        self.fsync_errno: int | None = None

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        return FaultyFile(super().open_log(path, create=create), self)


def test_disk_full_stores_nothing_and_recovers_by_itself(tmp_path: Path) -> None:
    faults = FaultyIO()
    log = PartitionLog.open(tmp_path / "p", TopicConfig.from_dict({}), fileio=faults)
    log.append(make_batch(3))
    faults.append_errno = errno.ENOSPC
    with pytest.raises(DiskFullError, match="disk full") as info:
        log.append(make_batch(3))
    assert info.value.retriable
    assert log.log_end_offset == 3
    assert log.segments()[-1].size == len(make_batch(3))
    faults.append_errno = None  # space freed: the next append works without a restart
    assert log.append(make_batch(2)).base_offset == 3
    log.close()
    reopened = PartitionLog.open(tmp_path / "p", TopicConfig.from_dict({}))
    assert reopened.log_end_offset == 5
    reopened.close()


def test_fsync_failure_makes_partition_read_only_and_never_acks(tmp_path: Path) -> None:
    faults = FaultyIO()
    log = PartitionLog.open(tmp_path / "p", TopicConfig.from_dict({}), fileio=faults)
    log.append(make_batch(3))
    faults.fsync_errno = errno.EIO
    with pytest.raises(LogReadOnlyError, match="read-only"):
        log.append(make_batch(3))
    assert log.high_watermark == 3  # the unsynced batch is not visible to readers
    assert log.read_only_reason is not None
    faults.fsync_errno = None
    with pytest.raises(LogReadOnlyError, match="restart"):
        log.append(make_batch(1))  # no retry-and-assume: the partition stays read-only
    assert log.read(0, 1 << 20).data  # reads keep working
    log.close()
    reopened = PartitionLog.open(tmp_path / "p", TopicConfig.from_dict({}))
    assert reopened.read_only_reason is None
    assert reopened.append(make_batch(1)).base_offset >= 3
    reopened.close()


def test_short_write_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OsLogFile removes the part of a batch written before ENOSPC, so no torn batch stays."""
    log_file = OsFileIO().open_log(tmp_path / "f.log", create=True)
    log_file.append(b"abc")
    real_pwrite = os.pwrite
    calls: list[int] = []

    def flaky(fd: int, data: bytes, position: int) -> int:
        calls.append(position)
        if len(calls) == 1:
            return real_pwrite(fd, bytes(memoryview(data)[:2]), position)
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "pwrite", flaky)
    with pytest.raises(OSError, match="no space"):
        log_file.append(b"defgh")
    monkeypatch.undo()
    assert log_file.size() == 3
    assert (tmp_path / "f.log").read_bytes() == b"abc"
    log_file.close()


class GatedFile(FaultyFile):
    """A FaultyFile whose fsync waits at ``gate`` once ``entered`` is set."""

    def __init__(self, inner: LogFile, faults: FaultyIO) -> None:
        super().__init__(inner, faults)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def fsync(self) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        super().fsync()


class GatedIO(FaultyIO):
    def open_log(self, path: Path, *, create: bool) -> LogFile:
        self.file = GatedFile(OsFileIO.open_log(self, path, create=create), self)
        return self.file


def test_sync_nowait_makes_durable_or_declines_while_another_thread_syncs(
    tmp_path: Path,
) -> None:
    """The event loop's fsync: done here, or False (nothing done) when a worker is syncing."""
    io = GatedIO()
    log = PartitionLog.open(tmp_path / "p", TopicConfig.from_dict({}), fileio=io)
    first = log.append(make_batch(3), wait_durable=False)
    assert log.high_watermark == 0
    assert log.sync_nowait(first.last_offset + 1) is True
    assert log.high_watermark == 3
    assert log.sync_nowait(3) is True  # durable already: no fsync needed

    second = log.append(make_batch(2), wait_durable=False)
    io.file.gate.clear()
    io.file.entered.clear()
    worker = threading.Thread(target=log.wait_durable, args=(second.last_offset + 1,))
    worker.start()
    assert io.file.entered.wait(5)  # the worker is inside its fsync, holding the sync
    assert log.sync_nowait(second.last_offset + 1) is False
    assert log.high_watermark == 3  # declining changed nothing
    io.file.gate.set()
    worker.join(5)
    assert log.high_watermark == 5

    third = log.append(make_batch(1), wait_durable=False)
    io.fsync_errno = errno.EIO
    with pytest.raises(LogReadOnlyError, match="read-only"):
        log.sync_nowait(third.last_offset + 1)
    assert log.high_watermark == 5  # never acknowledged, never visible
    log.close()
