"""The file-I/O seam of the partition log.

Every byte the log writes to a ``.log`` file, every fsync, rename and directory entry goes
through a :class:`FileIO`. Production uses :class:`OsFileIO`; the power-loss tests wrap it
with a layer that remembers what was not yet fsynced and drops it at a simulated crash.
Index files are memory-mapped and bypass the seam on purpose: they are derived data, rebuilt
from the log for every segment that recovery scans.

Concurrency: a :class:`LogFile` has one writer (the partition's append lock) and any number of
readers using ``pread``, which never moves a shared file position.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

__all__ = ["FileIO", "LogFile", "OsFileIO", "OsLogFile"]


class LogFile(Protocol):
    """An append-only file addressed by byte position."""

    path: Path

    def size(self) -> int:
        """Bytes of data in the file, including what is not yet fsynced (space reserved by
        :meth:`preallocate` past the data does not count)."""
        ...

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the end and return the position it starts at."""
        ...

    def pread(self, size: int, position: int) -> bytes:
        """Read up to ``size`` bytes at ``position`` (short only at the end of the file)."""
        ...

    def fsync(self) -> None:
        """Make every byte written so far durable."""
        ...

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes (and give back any reserved space)."""
        ...

    def preallocate(self, size: int) -> None:
        """Reserve the file's space up to ``size`` bytes, past the data, so that appends below
        it do not grow the file. Best effort: a file system that cannot does nothing."""
        ...

    def trim(self) -> None:
        """Give back the space reserved past the data, so the file ends where its data does."""
        ...

    def close(self) -> None:
        """Release the descriptor; reads after this fail."""
        ...


class FileIO(Protocol):
    """File-system operations with explicit durability points."""

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        """Open ``path`` for appends and reads; create it when ``create`` is true."""
        ...

    def fsync_dir(self, path: Path) -> None:
        """Make the directory entries of ``path`` (creations, renames, deletions) durable."""
        ...

    def rename(self, source: Path, target: Path) -> None:
        """Atomically replace ``target`` by ``source``; durable only after ``fsync_dir``."""
        ...

    def unlink(self, path: Path) -> None:
        """Remove a file; missing files are ignored."""
        ...

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` durably: temp file, fsync, rename, fsync directory."""
        ...


class OsLogFile:
    """A :class:`LogFile` over a POSIX descriptor."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._size = os.fstat(fd).st_size
        #: The file's size on disk: the data plus space reserved by preallocate. A file left
        #: by a crash may end in reserved zeros; recovery finds the data's end and cuts them.
        self._reserved = self._size

    def size(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> int:
        position = self._size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], position + written)
        except OSError:
            # A short write must not leave half a batch behind: cut back to where we started.
            os.ftruncate(self._fd, position)
            self._reserved = position
            raise
        self._size = position + written
        return position

    def pread(self, size: int, position: int) -> bytes:
        return os.pread(self._fd, size, position)

    def fsync(self) -> None:
        # fdatasync: data plus the metadata needed to read it back (the file size), without
        # the timestamps that fsync would also write.
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size
        self._reserved = size

    def preallocate(self, size: int) -> None:
        # Why: an fdatasync after an append that grows the file must also commit the new
        # file size to the journal; into reserved space it need not. On ext4 here that is
        # 0.02 ms at the median and 0.05 ms at the p99 of a 0.16 ms fdatasync.
        if size <= self._reserved:
            return
        try:
            os.posix_fallocate(self._fd, self._reserved, size - self._reserved)
        except OSError:  # no space or no support: appends still work, unreserved
            self._reserved = max(self._size, os.fstat(self._fd).st_size)
            return
        self._reserved = size

    def trim(self) -> None:
        if self._reserved > self._size:
            os.ftruncate(self._fd, self._size)
            self._reserved = self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileIO:
    """The real file system."""

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
        return OsLogFile(path, fd)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def write_atomic(self, path: Path, data: bytes) -> None:
        temp = path.with_name(path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.unlink(temp)  # a half-written temp file would hold space on a full disk
            raise
        os.close(fd)
        self.rename(temp, path)
        self.fsync_dir(path.parent)
