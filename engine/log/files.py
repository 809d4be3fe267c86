"""Names of every file and directory the partition log writes, in one place.

Layout of a data directory::

    <data>/<topic>-<n>/                               one partition (see partition_dir_name)
        00000000000000012345.log                      batches from base offset 12345 on
        00000000000000012345.index                    its sparse offset index
        00000000000000012345.timeindex                its sparse time index
        00000000000000012345.log.swap                 a replacement waiting to be renamed in
        recovery-point.checkpoint                     offsets below it need no scan
        .clean_shutdown                               written on orderly close
        quarantine/                                   damaged byte ranges kept aside

A segment file is named by its base offset, zero-padded to 20 digits so that a plain sort of
the names is a sort by offset (2**63 - 1 has 19 digits, so every int64 offset fits). Transient
suffixes (``.cleaned``, ``.swap``, ``.deleted``, ``.tmp``) are appended to a full segment file
name; whatever carries one when a partition opens is the remains of interrupted work.

Pure functions over names; nothing here touches the file system.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "CLEANED_SUFFIX",
    "CLEAN_SHUTDOWN_FILE",
    "DELETED_SUFFIX",
    "INDEX_SUFFIX",
    "LOG_SUFFIX",
    "PRODUCER_ROLL_SUFFIX",
    "PRODUCER_SNAPSHOT_FILE",
    "QUARANTINE_DIR",
    "RECOVERY_CHECKPOINT_FILE",
    "SEGMENT_SUFFIXES",
    "SWAP_SUFFIX",
    "TEMP_SUFFIX",
    "TIMEINDEX_SUFFIX",
    "TRANSIENT_SUFFIXES",
    "parse_base_offset",
    "parse_partition_dir_name",
    "parse_producer_roll_snapshot",
    "partition_dir_name",
    "producer_roll_snapshot_name",
    "segment_file_name",
    "segment_path",
]

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
DELETED_SUFFIX = ".deleted"
TEMP_SUFFIX = ".tmp"

SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX)
"""The three files of one segment."""
TRANSIENT_SUFFIXES = (CLEANED_SUFFIX, SWAP_SUFFIX, DELETED_SUFFIX, TEMP_SUFFIX)
"""Suffixes of work in progress, appended after a segment suffix."""

CLEAN_SHUTDOWN_FILE = ".clean_shutdown"
RECOVERY_CHECKPOINT_FILE = "recovery-point.checkpoint"
PRODUCER_SNAPSHOT_FILE = "producer-state.snapshot"
"""Idempotent-producer state at a clean shutdown: a clean start loads it instead of reading
every batch header of the log."""
PRODUCER_ROLL_SUFFIX = ".producers"
"""``<20-digit offset>.producers``: idempotent-producer state as of a segment roll, named by the
new segment's base offset. An unclean start loads the newest one that still matches the log
and reads only the batch headers after it, instead of every header of the log."""
QUARANTINE_DIR = "quarantine"

_OFFSET_DIGITS = 20
_MAX_OFFSET = 2**63 - 1
_SEGMENT_NAME = re.compile(
    r"(?P<base>[0-9]{20})"
    r"(?:\.log|\.index|\.timeindex)"
    r"(?:\.cleaned|\.swap|\.deleted|\.tmp)?"
)
_PARTITION_DIR = re.compile(r"(?P<topic>[A-Za-z0-9._-]+)-(?P<partition>0|[1-9][0-9]*)")


def segment_file_name(base_offset: int, suffix: str) -> str:
    """``00000000000000012345.log`` for base offset 12345 and suffix ``.log``.

    Raises:
        ValueError: ``base_offset`` is not an int64 offset (negative or too large).
    """
    if not 0 <= base_offset <= _MAX_OFFSET:
        raise ValueError(f"base offset must be in [0, 2**63 - 1], got {base_offset}")
    return f"{base_offset:0{_OFFSET_DIGITS}d}{suffix}"


def segment_path(directory: Path, base_offset: int, suffix: str) -> Path:
    """The path of one segment file inside a partition directory."""
    return directory / segment_file_name(base_offset, suffix)


def producer_roll_snapshot_name(offset: int) -> str:
    """``00000000000000012345.producers`` for the roll at offset 12345."""
    return f"{offset:0{_OFFSET_DIGITS}d}{PRODUCER_ROLL_SUFFIX}"


def parse_producer_roll_snapshot(file_name: str) -> int | None:
    """The offset a roll snapshot is named by, or None for any other file."""
    digits = file_name.removesuffix(PRODUCER_ROLL_SUFFIX)
    if digits == file_name or len(digits) != _OFFSET_DIGITS or not digits.isascii() or (
            not digits.isdigit()):
        return None
    return int(digits)


def parse_base_offset(file_name: str) -> int | None:
    """The base offset a segment file is named by, or None when the name is not one.

    A segment file is 20 ASCII digits, one of ``.log``/``.index``/``.timeindex`` and at most
    one transient suffix, so ``00000000000000000042.log.swap`` parses to 42 and the caller
    tells the kinds apart by suffix. Checkpoints, markers and foreign files give None.
    """
    match = _SEGMENT_NAME.fullmatch(file_name)
    if match is None:
        return None
    base = int(match["base"])
    return base if base <= _MAX_OFFSET else None


def partition_dir_name(topic: str, partition: int) -> str:
    """``orders-3`` for partition 3 of ``orders``.

    The topic name is validated by the broker (see ``engine.topic_names``); this only refuses
    names that would escape the data directory, since it builds a path.

    Raises:
        ValueError: a negative partition, or a topic that is empty, ``.``, ``..`` or has ``/``.
    """
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    if topic in ("", ".", "..") or "/" in topic or "\0" in topic:
        raise ValueError(f"{topic!r} cannot name a partition directory")
    return f"{topic}-{partition}"


def parse_partition_dir_name(name: str) -> tuple[str, int] | None:
    """``("orders", 3)`` for ``orders-3``; None for any other directory name.

    The partition number is the part after the last ``-`` and must be written canonically
    (``orders-03`` is not a partition directory), so parsing round-trips with
    :func:`partition_dir_name`. ``orders-3.deleted`` and ``quarantine`` give None.
    """
    match = _PARTITION_DIR.fullmatch(name)
    if match is None or match["topic"] in (".", ".."):
        return None
    return match["topic"], int(match["partition"])
