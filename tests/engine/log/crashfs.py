"""A test-only file layer that forgets what was not fsynced, to simulate power loss.

It wraps the real file system through the engine's FileIO seam and remembers, per file, how
many bytes are durable (covered by an fsync) and which directory entries (creations, renames)
are not yet covered by an fsync of their directory. ``crash()`` then rewrites the files on disk
to a state a power cut could leave, following LazyFS's model:

- a file whose creation was never made durable by a directory fsync disappears;
- a rename not followed by a directory fsync is undone;
- each file keeps its durable bytes plus, at random, nothing of the rest ("drop"), a prefix of
  the rest cut at a 512 B or 4 KiB boundary ("torn"), or a zero-filled stretch ("zeros").

Index files are memory-mapped and bypass the seam; the log rebuilds them for every segment it
recovers, so they need no simulation.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from engine.log.fileio import LogFile, OsFileIO


@dataclass
class _FileState:
    durable_size: int
    entry_durable: bool


@dataclass
class CrashStats:
    dropped_files: int = 0
    reverted_renames: int = 0
    modes: dict[str, int] = field(default_factory=dict)


class _TrackedLogFile:
    def __init__(self, inner: LogFile, fs: CrashFileIO) -> None:
        self._inner = inner
        self._fs = fs
        self.path = inner.path

    def size(self) -> int:
        return self._inner.size()

    def append(self, data: bytes | bytearray | memoryview) -> int:
        return self._inner.append(data)

    def pread(self, size: int, position: int) -> bytes:
        return self._inner.pread(size, position)

    def fsync(self) -> None:
        self._inner.fsync()
        self._fs.state(self.path).durable_size = self._inner.size()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)
        state = self._fs.state(self.path)
        state.durable_size = min(state.durable_size, size)

    def preallocate(self, size: int) -> None:
        self._inner.preallocate(size)

    def trim(self) -> None:
        self._inner.trim()

    def close(self) -> None:
        self._inner.close()


class CrashFileIO(OsFileIO):
    """OsFileIO that can simulate losing everything not yet made durable."""

    def __init__(self) -> None:
        self._files: dict[Path, _FileState] = {}
        self._pending_renames: list[tuple[Path, Path]] = []
        self._open: list[_TrackedLogFile] = []

    def state(self, path: Path) -> _FileState:
        state = self._files.get(path)
        if state is None:
            size = path.stat().st_size if path.exists() else 0
            state = _FileState(size, True)
            self._files[path] = state
        return state

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        existed = path.exists()
        inner = super().open_log(path, create=create)
        if not existed:
            self._files[path] = _FileState(0, False)
        else:
            self.state(path)
        tracked = _TrackedLogFile(inner, self)
        self._open.append(tracked)
        return tracked

    def fsync_dir(self, path: Path) -> None:
        super().fsync_dir(path)
        for file_path, state in self._files.items():
            if file_path.parent == path:
                state.entry_durable = True
        self._pending_renames = [(s, t) for s, t in self._pending_renames if t.parent != path]

    def rename(self, source: Path, target: Path) -> None:
        super().rename(source, target)
        state = self._files.pop(source, None)
        if state is not None:
            self._files[target] = state
        self._pending_renames.append((source, target))

    def crash(self, rng: random.Random) -> CrashStats:
        """Close every descriptor and rewrite the files to a possible post-power-loss state."""
        stats = CrashStats()
        for tracked in self._open:
            tracked.close()
        self._open.clear()
        for source, target in reversed(self._pending_renames):
            if target.exists():
                os.replace(target, source)
                stats.reverted_renames += 1
                state = self._files.pop(target, None)
                if state is not None:
                    self._files[source] = state
        for path, state in self._files.items():
            if not path.exists():
                continue
            if not state.entry_durable:
                path.unlink()
                stats.dropped_files += 1
                continue
            size = path.stat().st_size
            if size <= state.durable_size:
                continue
            mode = rng.choice(("drop", "torn", "zeros", "keep"))
            stats.modes[mode] = stats.modes.get(mode, 0) + 1
            with open(path, "r+b") as f:
                if mode == "drop":
                    f.truncate(state.durable_size)
                elif mode == "torn":
                    block = rng.choice((512, 4096))
                    keep = state.durable_size + rng.randint(0, size - state.durable_size)
                    f.truncate(max(state.durable_size, keep - keep % block))
                elif mode == "zeros":
                    start = rng.randint(state.durable_size, size)
                    f.seek(start)
                    f.write(b"\x00" * (size - start))
        self._files.clear()
        self._pending_renames.clear()
        return stats
