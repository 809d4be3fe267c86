"""What a segment's two sparse indexes share: one memory-mapped file of fixed-size entries.

Byte layout, for both indexes: a flat array of little-endian entries with no header and no
count, then preallocated space up to ``max_index_bytes``::

    +---------+---------+-----+-------------+-------------------------------+
    | entry 0 | entry 1 | ... | entry n - 1 | sparse zeros (active segment) |
    +---------+---------+-----+-------------+-------------------------------+

The entry is the subclass's numpy structured dtype: ``OffsetIndex`` 8 bytes (relative offset
uint32, position uint32), ``TimeIndex`` 12 bytes (timestamp int64, relative offset uint32).
The count of valid entries lives only in memory. A trimmed file (sealed segment, or active
segment after a clean close) is exactly ``entries * entry_size`` bytes, so its size gives the
count on open; an untrimmed one does not, which is one reason an unclean shutdown rebuilds
the active segment's indexes from the log.

Invariants:
    - the search key (offset index: relative offset; time index: timestamp) strictly increases
      from entry to entry, so a binary search over the valid prefix is exact;
    - ``entries <= max_entries``; a trimmed file's size is a multiple of the entry size;
    - indexes are derived data: any doubt (a failed :meth:`AbstractIndex.sanity_check`, an
      entry that does not point at its batch) means "rebuild from the log", never "trust".

Concurrency contract:
    - one writer: append, truncate, trim, resize, reset, flush and close run only under the
      owning partition's lock;
    - readers (lookup, entry, the ``*_entry`` properties) take no lock and may run alongside
      the writer and each other. Each reads one immutable snapshot ``(entries, array, keys)``
      that the writer replaces only after the entry bytes are in place, so a reader sees a
      consistent prefix: the old one or the new one;
    - a remap (trim, resize, reset) swaps the snapshot; a reader still holding the old one
      keeps the old mapping alive until it returns. A shrink must never drop entries a reader
      may still look at (a page past end of file reads as SIGBUS), which holds because
      entries are truncated only in recovery, before the partition serves reads.

Why a memory map: lookups touch about log2(n) entries, so the page cache serves them without
copying the file into the heap. Why sparse preallocation (``ftruncate``), as Kafka does:
reserving real blocks (``posix_fallocate``) would cost ``segment.index.bytes`` of disk per
index whether used or not. The price is the usual one for writable maps of sparse files:
if the disk fills, the first store into an unbacked page raises SIGBUS instead of ENOSPC.
An index page covers hundreds of entries, so that happens once per many megabytes of log.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np
import numpy.typing as npt

from engine.errors import EngineError, StorageError

__all__ = ["AbstractIndex", "CorruptIndexError", "InvalidIndexAppendError"]

_Entries = npt.NDArray[Any]
_View = tuple[int, _Entries, _Entries]
"""A reader's snapshot: (valid entries, all mapped entries, search-key column)."""


class CorruptIndexError(StorageError, ValueError):
    """An index file that cannot be trusted; the segment rebuilds it from the log.

    Also a ``ValueError`` so that code treating "unusable derived data" as ``ValueError``
    (the segment's open path) rebuilds instead of failing.
    """

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"corrupt index {path}: {detail}", str(path))
        self.detail = detail


class InvalidIndexAppendError(EngineError, ValueError):
    """An append that would break the index's order, overflow a field or its capacity.

    A caller bug or a damaged log, never something to retry.
    """

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"cannot append to index {path}: {detail}")
        self.path = str(path)
        self.detail = detail


class AbstractIndex:
    """A file of fixed-size, key-ordered entries mapped into memory (see module docstring).

    Subclasses set :attr:`ENTRY_DTYPE` and :attr:`KEY_FIELD`, add typed append and lookup
    methods, and check their own ordering in :meth:`_check_entries`.
    """

    ENTRY_DTYPE: ClassVar[np.dtype[np.void]]
    """Little-endian, packed structured dtype of one entry."""
    KEY_FIELD: ClassVar[str]
    """The field binary searches run over; strictly increasing."""

    def __init__(
        self,
        path: Path,
        base_offset: int,
        max_index_bytes: int,
        writable: bool,
        *,
        entries: int | None = None,
    ) -> None:
        """Open ``path``; see :meth:`open`."""
        if base_offset < 0:
            raise ValueError(f"base offset must be >= 0, got {base_offset}")
        if max_index_bytes < 0:
            raise ValueError(f"max_index_bytes must be >= 0, got {max_index_bytes}")
        self._path = path
        self.base_offset = base_offset
        self._max_index_bytes = max_index_bytes
        self._writable = writable
        self._fd: int | None = None
        self._mmap: mmap.mmap | None = None
        self._length = 0
        self._view: _View = self._empty_view()
        self._misaligned_bytes = 0
        self._dirty = False
        self._closed = False
        self._open(entries)

    @classmethod
    def open(
        cls,
        path: Path,
        base_offset: int,
        max_index_bytes: int,
        writable: bool,
        *,
        entries: int | None = None,
    ) -> Self:
        """Open (creating when ``writable``) the index of the segment at ``base_offset``.

        Args:
            path: the index file.
            base_offset: the segment's base offset; entries store offsets relative to it.
            max_index_bytes: preallocation of a writable index, rounded down to whole
                entries. A file already holding more valid entries is never cut short.
            writable: map read-write and preallocate; otherwise map the file read-only.
            entries: valid entries; None trusts the file size (right for a trimmed file).
                Recovery passes 0 and rebuilds.

        Raises:
            OSError: the file cannot be opened, sized or mapped.
            ValueError: ``entries`` is more than the file holds.
        """
        return cls(path, base_offset, max_index_bytes, writable, entries=entries)

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def entry_size(self) -> int:
        return self.ENTRY_DTYPE.itemsize

    @property
    def entries(self) -> int:
        """The number of valid entries."""
        return self._view[0]

    @property
    def max_entries(self) -> int:
        """How many entries the current mapping holds (the file's size in entries)."""
        return len(self._view[1])

    @property
    def is_full(self) -> bool:
        """True when the next append has no room; the segment rolls before that."""
        return self.entries >= self.max_entries

    @property
    def max_index_bytes(self) -> int:
        """The preallocation used when the index is (re)opened for appends."""
        return self._max_index_bytes

    @property
    def size_bytes(self) -> int:
        """Bytes of valid entries (what :meth:`trim` leaves on disk)."""
        return self.entries * self.entry_size

    # ------------------------------------------------------------------ writer side

    def truncate_to_entries(self, entries: int) -> None:
        """Keep the first ``entries`` entries; the file keeps its size until :meth:`trim`."""
        current, array, keys = self._view
        if not 0 <= entries <= current:
            raise ValueError(f"cannot truncate {self._path} from {current} to {entries} entries")
        self._view = (entries, array, keys)

    def reset(self) -> None:
        """Drop every entry and make room for a rebuild.

        A rebuild can happen on any segment (a damaged index found while reading), so a
        read-only or trimmed index is reopened writable with its full preallocation.
        """
        self._check_open()
        self.truncate_to_entries(0)
        self._misaligned_bytes = 0
        length = self._rounded(self._max_index_bytes)
        if not self._writable or self._length != length:
            self._remap(length)

    def trim(self) -> None:
        """Shrink the file to its valid entries (sealing a segment, clean close).

        After this the file size alone gives the entry count on the next open. The index
        stays writable but is full; :meth:`resize` makes room again. No-op when read-only.
        """
        self._check_open()
        if self._writable and self._length != self.size_bytes:
            self._remap(self.size_bytes)

    def resize(self, max_index_bytes: int) -> None:
        """Reopen writable with a new preallocation, keeping every valid entry.

        Used when a trimmed index becomes the active segment's again. The file never shrinks
        below its valid entries; use :meth:`truncate_to_entries` to drop entries.
        """
        self._check_open()
        if max_index_bytes < 0:
            raise ValueError(f"max_index_bytes must be >= 0, got {max_index_bytes}")
        self._max_index_bytes = max_index_bytes
        length = max(self._rounded(max_index_bytes), self.size_bytes)
        if not self._writable or self._length != length:
            self._remap(length)

    def flush(self) -> None:
        """Write dirty pages and the file size to disk (msync, then fsync for the metadata).

        A no-op when nothing changed since the last flush: an entry is added once per
        ``index.interval.bytes`` of log, so most flushes of the log have nothing to do here.
        """
        if self._closed or not self._writable or not self._dirty:
            return
        if self._mmap is not None:
            self._mmap.flush()
        if self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False

    def close(self) -> None:
        """Unmap and close without trimming; what an orderly close trims, it trims first.

        Idempotent. Not trimming here keeps :meth:`close` usable for the crash-like
        ``abandon`` path, which must leave files as a crash would.
        """
        if self._closed:
            return
        self._closed = True
        self._unmap()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def delete(self) -> bool:
        """Close and unlink the file; False when it was already gone."""
        self.close()
        try:
            self._path.unlink()
        except FileNotFoundError:
            return False
        return True

    def sanity_check(self) -> None:
        """Check what can be checked without the log: size and ordering of the entries.

        O(entries), vectorised; run when opening a segment whose index is trusted.

        Raises:
            CorruptIndexError: the file size is not whole entries, or the keys are out of order.
        """
        if self._misaligned_bytes:
            raise CorruptIndexError(
                self._path,
                f"size is not a multiple of the {self.entry_size}-byte entry "
                f"({self._misaligned_bytes} trailing bytes)",
            )
        entries, array, _ = self._view
        self._check_entries(array[:entries])

    # ------------------------------------------------------------------ for subclasses

    def _check_entries(self, valid: _Entries) -> None:
        """Raise CorruptIndexError when ``valid`` breaks the subclass's ordering."""
        self._require_increasing(valid, self.KEY_FIELD, strict=True)

    def _require_increasing(self, valid: _Entries, field: str, *, strict: bool) -> None:
        column = valid[field]
        if len(column) < 2:
            return
        later, earlier = column[1:], column[:-1]
        bad = np.flatnonzero(later <= earlier if strict else later < earlier)
        if bad.size:
            i = int(bad[0]) + 1
            relation = "does not increase past" if strict else "decreases from"
            raise CorruptIndexError(
                self._path,
                f"entry {i} {field} {int(column[i])} {relation} entry {i - 1} "
                f"({int(column[i - 1])})",
            )

    def _floor_slot(self, key: int) -> tuple[int, int, _Entries]:
        """Slot of the last entry whose key is <= ``key`` (-1 if none), from one snapshot.

        Returns ``(slot, entries, array)`` so the caller reads entries from the same snapshot.

        ``np.searchsorted`` copies a strided column (the key field of a structured array)
        into a contiguous one first: O(n), 0.4 ms at a million entries. ``bisect`` over the
        column view reads only the log2(n) entries it probes: about 1 us at a million. The
        caller clamps ``key`` to the key field's range.
        """
        entries, array, keys = self._view
        return bisect.bisect_right(keys, key, 0, entries) - 1, entries, array

    def _first_slot_at_or_after(self, field: str, value: int) -> int:
        """Slot of the first valid entry whose ``field`` is >= ``value`` (``entries`` if none)."""
        entries, array, _ = self._view
        return bisect.bisect_left(array[field], value, 0, entries)

    def _append_entry(self, entry: tuple[int, int]) -> None:
        """Store ``entry`` after the valid ones, then publish it to readers."""
        entries, array, keys = self._view
        if not self._writable:
            raise InvalidIndexAppendError(self._path, "the index is read-only")
        if entries >= len(array):
            self._check_open()
            raise InvalidIndexAppendError(
                self._path, f"the index is full ({entries} entries, {self._length} bytes)"
            )
        array[entries] = entry
        self._view = (entries + 1, array, keys)
        self._dirty = True

    def _last_entry(self) -> tuple[int, int] | None:
        entries, array, _ = self._view
        return cast(tuple[int, int], array.item(entries - 1)) if entries else None

    def _entry_at(self, slot: int) -> tuple[int, int]:
        entries, array, _ = self._view
        if not 0 <= slot < entries:
            raise IndexError(f"entry {slot} of {self._path} does not exist ({entries} entries)")
        return cast(tuple[int, int], array.item(slot))

    # ------------------------------------------------------------------ mapping

    def _rounded(self, max_index_bytes: int) -> int:
        return max_index_bytes - max_index_bytes % self.entry_size

    def _empty_view(self) -> _View:
        array = np.empty(0, dtype=self.ENTRY_DTYPE)
        return (0, array, array[self.KEY_FIELD])

    def _open(self, entries: int | None) -> None:
        flags = os.O_RDWR | os.O_CREAT if self._writable else os.O_RDONLY
        fd = os.open(self._path, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            available = size // self.entry_size
            if entries is None:
                entries = available
            elif not 0 <= entries <= available:
                raise ValueError(f"{self._path} holds {available} entries, not {entries}")
            self._misaligned_bytes = size % self.entry_size
            if self._writable:
                length = max(self._rounded(self._max_index_bytes), entries * self.entry_size)
                if length != size:
                    os.ftruncate(fd, length)  # sparse: blocks are allocated on first store
            else:
                length = available * self.entry_size
            self._map(fd, length, entries)
        except BaseException:
            os.close(fd)
            raise
        if self._writable:
            self._fd = fd
        else:
            os.close(fd)  # the mapping keeps the file open by itself

    def _map(self, fd: int, length: int, entries: int) -> None:
        if length == 0:  # mmap refuses empty files
            empty = self._empty_view()
            self._view = (entries, empty[1], empty[2])
            self._length = 0
            return
        access = mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ
        self._mmap = mmap.mmap(fd, length, access=access)
        array = np.frombuffer(self._mmap, dtype=self.ENTRY_DTYPE)
        self._length = length
        self._view = (entries, array, array[self.KEY_FIELD])

    def _unmap(self) -> None:
        self._view = self._empty_view()
        self._length = 0
        mm, self._mmap = self._mmap, None
        if mm is not None:
            # BufferError: a reader still holds the old snapshot; unmapped when it lets go.
            with contextlib.suppress(BufferError):
                mm.close()

    def _remap(self, length: int) -> None:
        """Resize the file to ``length`` bytes and map it read-write, keeping the entries.

        While this runs readers see no entries, which is slow but correct: a lookup then
        starts from the segment's first byte. If it fails the index stays empty that way.
        """
        entries = self.entries
        self._unmap()
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR)
        self._writable = True
        os.ftruncate(self._fd, length)
        self._map(self._fd, length, entries)
        self._misaligned_bytes = 0
        self._dirty = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"index {self._path} is closed")

    def __repr__(self) -> str:
        mode = "rw" if self._writable else "ro"
        return (
            f"{type(self).__name__}({str(self._path)!r}, base_offset={self.base_offset}, "
            f"entries={self.entries}/{self.max_entries}, {mode})"
        )
