"""The broker: topics of partitions in one data directory.

Data directory layout::

    <data>/
        .lock                  flock held while a broker owns the directory
        topics.json            topic name -> partition count and config overrides (atomic swaps)
        <topic>-<n>/           one PartitionLog per partition (see partition_log.py)

Topic creation writes the partition directories first and ``topics.json`` last, so a crash in
between leaves unused directories, never a topic without its data. Deletion removes the topic
from ``topics.json`` first, then renames its directories to ``*.deleted`` and removes them. A
partition directory that no topic claims is reported and kept: the broker never deletes data it
cannot account for. If ``topics.json`` is unreadable, topics are rebuilt from the directory names
with default configs, and the problem is logged.

Concurrency: topic creation and deletion take ``_lock``; per-partition work is the partition's.
A background thread flushes ``durability=async`` partitions every ``flush.ms`` and applies
retention every ``retention_check_interval_ms``; every ``compaction_check_interval_ms`` it hands
the ``cleanup.policy=compact`` partitions to the log cleaner's own thread, so a long compaction
never delays those flushes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.config import TopicConfig
from engine.errors import (
    InvalidTopicError,
    StorageError,
    TopicExistsError,
    TopicLimitError,
    UnknownPartitionError,
    UnknownTopicError,
)
from engine.log.compaction import LogCleaner
from engine.log.fileio import FileIO, OsFileIO
from engine.log.files import DELETED_SUFFIX, parse_partition_dir_name, partition_dir_name
from engine.log.partition_log import AppendResult, PartitionLog, ReadResult
from engine.topic_names import INTERNAL_TOPIC_PREFIX, validate_topic_name

__all__ = ["Broker", "BrokerSettings", "TopicInfo"]

log = logging.getLogger(__name__)

_TOPICS_FILE = "topics.json"
_LOCK_FILE = ".lock"


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int
    config: TopicConfig
    overrides: Mapping[str, str]

    @property
    def internal(self) -> bool:
        return self.name.startswith(INTERNAL_TOPIC_PREFIX)


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Broker-wide limits and defaults."""

    max_partitions_per_topic: int = 10_000
    max_topics: int = 100_000
    #: Partitions over all topics (each is a directory with open files and memory maps).
    max_partitions: int = 1_000_000
    maintenance_interval_ms: int = 200
    retention_check_interval_ms: int = 300_000
    compaction_check_interval_ms: int = 30_000
    default_overrides: Mapping[str, str] | None = None


class _Topic:
    def __init__(self, info: TopicInfo, partitions: list[PartitionLog]) -> None:
        self.info = info
        self.partitions = partitions


class Broker:
    """Owns a data directory; create with :meth:`open`, release with :meth:`close`."""

    def __init__(
        self,
        data_dir: Path,
        settings: BrokerSettings,
        clock: Clock,
        fileio: FileIO,
        lock_fd: int,
    ) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self._clock = clock
        self._fileio = fileio
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._topics: dict[str, _Topic] = {}
        self._default_config = TopicConfig.from_dict(settings.default_overrides or {})
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._last_retention = clock.monotonic()
        self._cleaner = LogCleaner(fileio, clock)
        self._last_compaction = clock.monotonic()
        #: Damage found at open: torn tails cut and ranges quarantined (not "trimmed" zeros).
        self.recovery_events = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        *,
        settings: BrokerSettings | None = None,
        clock: Clock | None = None,
        fileio: FileIO | None = None,
        background: bool = True,
    ) -> Broker:
        """Open (creating) ``data_dir``, recover every partition and start maintenance."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise StorageError(
                f"data directory {path} is in use by another broker process", str(path)
            ) from exc
        broker = cls(path, settings or BrokerSettings(), clock or SystemClock(),
                     fileio or OsFileIO(), lock_fd)
        try:
            broker._load()
        except BaseException:
            broker.close()
            raise
        if background:
            broker.start_maintenance()
        return broker

    def _load(self) -> None:
        for entry in os.scandir(self.data_dir):
            if entry.is_dir() and entry.name.endswith(DELETED_SUFFIX):
                shutil.rmtree(entry.path)
        metadata = self._read_metadata()
        for name, (count, overrides) in sorted(metadata.items()):
            config = TopicConfig.from_dict(overrides, base=self._default_config)
            partitions = [
                self._open_partition(name, n, config) for n in range(count)
            ]
            info = TopicInfo(name, count, config, dict(overrides))
            self._topics[name] = _Topic(info, partitions)
        for entry in os.scandir(self.data_dir):
            parsed = parse_partition_dir_name(entry.name) if entry.is_dir() else None
            if parsed and (parsed[0] not in metadata or parsed[1] >= metadata[parsed[0]][0]):
                log.warning("partition directory %s belongs to no topic; kept", entry.path)

    def _open_partition(self, topic: str, partition: int, config: TopicConfig) -> PartitionLog:
        directory = self.data_dir / partition_dir_name(topic, partition)
        partition_log = PartitionLog.open(
            directory, config, fileio=self._fileio, clock=self._clock
        )
        events = partition_log.recovery.events
        self.recovery_events += sum(1 for e in events if e.kind != "trimmed")
        return partition_log

    def _read_metadata(self) -> dict[str, tuple[int, dict[str, str]]]:
        path = self.data_dir / _TOPICS_FILE
        if not path.exists():
            return self._metadata_from_directories() if self._has_partition_dirs() else {}
        try:
            raw = json.loads(path.read_text())
            result: dict[str, tuple[int, dict[str, str]]] = {}
            for name, entry in raw["topics"].items():
                result[str(name)] = (
                    int(entry["partitions"]),
                    {str(k): str(v) for k, v in entry["config"].items()},
                )
            return result
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s is unreadable (%s); topics rebuilt from directory names", path, exc)
            return self._metadata_from_directories()

    def _has_partition_dirs(self) -> bool:
        return any(
            parse_partition_dir_name(e.name) for e in os.scandir(self.data_dir) if e.is_dir()
        )

    def _metadata_from_directories(self) -> dict[str, tuple[int, dict[str, str]]]:
        counts: dict[str, int] = {}
        for entry in os.scandir(self.data_dir):
            parsed = parse_partition_dir_name(entry.name) if entry.is_dir() else None
            if parsed:
                counts[parsed[0]] = max(counts.get(parsed[0], 0), parsed[1] + 1)
        return {name: (count, {}) for name, count in counts.items()}

    def _write_metadata(self) -> None:
        topics = {
            name: {"partitions": t.info.partitions, "config": dict(t.info.overrides)}
            for name, t in sorted(self._topics.items())
        }
        data = json.dumps({"version": 1, "topics": topics}, indent=1).encode()
        self._fileio.write_atomic(self.data_dir / _TOPICS_FILE, data)

    def start_maintenance(self) -> None:
        if self._maintenance is None:
            self._maintenance = threading.Thread(
                target=self._maintenance_loop, name="moldau-maintenance", daemon=True
            )
            self._maintenance.start()
            self._cleaner.start()

    def _maintenance_loop(self) -> None:
        interval = self.settings.maintenance_interval_ms / 1000.0
        while not self._stop.wait(interval):
            try:
                self.run_maintenance()
            except Exception:  # the loop must survive one partition's failure
                log.exception("maintenance pass failed")

    def run_maintenance(
        self, *, force_retention: bool = False, force_compaction: bool = False
    ) -> None:
        """One pass: flush due async partitions, apply retention and compaction when due.

        ``force_compaction`` compacts in the calling thread and returns when it is done.
        """
        now = self._clock.monotonic()
        retention_due = force_retention or (
            now - self._last_retention >= self.settings.retention_check_interval_ms / 1000.0
        )
        if retention_due:
            self._last_retention = now
        compaction_due = force_compaction or (
            now - self._last_compaction >= self.settings.compaction_check_interval_ms / 1000.0
        )
        for topic in list(self._topics.values()):
            for partition in topic.partitions:
                if partition.config.durability == "async":
                    try:
                        partition.maybe_flush()
                    except StorageError:
                        log.exception("flush of %s failed", partition.directory)
                if retention_due:
                    partition.apply_retention()
        if compaction_due:
            self._last_compaction = now
            compacted = [p for t in list(self._topics.values()) for p in t.partitions]
            compacted = [p for p in compacted if p.config.compact]
            self._cleaner.submit(compacted, wait=force_compaction)

    def close(self) -> None:
        """Stop maintenance, flush and close every partition cleanly, release the directory."""
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.join()
        self._cleaner.close()
        with self._lock:
            for topic in self._topics.values():
                for partition in topic.partitions:
                    try:
                        partition.close()
                    except (StorageError, OSError):
                        log.exception("closing %s failed", partition.directory)
            self._topics.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ topics

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None = None,
        *,
        allow_internal: bool = False,
    ) -> TopicInfo:
        validate_topic_name(name, allow_internal=allow_internal)
        internal = name.startswith(INTERNAL_TOPIC_PREFIX)
        most = 1 << 20 if internal else self.settings.max_partitions_per_topic
        if not 1 <= partitions <= most:
            raise InvalidTopicError(
                f"partitions must be between 1 and {most}, got {partitions}"
            )
        overrides = {str(k): str(v) for k, v in (config or {}).items()}
        topic_config = TopicConfig.from_dict(overrides, base=self._default_config)
        with self._lock:
            if name in self._topics:
                raise TopicExistsError(name)
            if self._collides(name):
                raise InvalidTopicError(
                    f"topic {name!r} collides with an existing topic once '.' and '_' are "
                    "treated alike (as Kafka does for metric names); choose another name"
                )
            self._check_limits(name, partitions)
            logs = [self._open_partition(name, n, topic_config) for n in range(partitions)]
            self._fileio.fsync_dir(self.data_dir)
            info = TopicInfo(name, partitions, topic_config, overrides)
            self._topics[name] = _Topic(info, logs)
            self._write_metadata()
            return info

    def _check_limits(self, name: str, partitions: int) -> None:
        """Internal topics are exempt: the broker's own views must always be able to start."""
        if name.startswith(INTERNAL_TOPIC_PREFIX):
            return
        user_topics = [t for t in self._topics.values() if not t.info.internal]
        if len(user_topics) >= self.settings.max_topics:
            raise TopicLimitError(
                f"the broker holds its maximum of {self.settings.max_topics} topics; delete "
                "unused topics or raise max_topics"
            )
        held = sum(len(topic.partitions) for topic in user_topics)
        if held + partitions > self.settings.max_partitions:
            raise TopicLimitError(
                f"{partitions} more partitions would pass the broker's maximum of "
                f"{self.settings.max_partitions} (it holds {held}); delete unused topics or "
                "raise max_partitions"
            )

    def _collides(self, name: str) -> bool:
        folded = name.replace(".", "_")
        return any(other.replace(".", "_") == folded for other in self._topics)

    def delete_topic(self, name: str) -> None:
        # short unique names: "<topic>-<n>.deleted" could pass the 255-byte name limit
        with self._lock:
            topic = self._topics.pop(name, None)
            if topic is None:
                raise UnknownTopicError(name)
            self._write_metadata()
            doomed = [self.data_dir / f"{uuid.uuid4().hex}{DELETED_SUFFIX}"
                      for _ in topic.partitions]
            # moved aside under the lock: a create of the same name right after must find
            # no directory, not open the old data or lose its directory to this rename
            for partition, target in zip(topic.partitions, doomed, strict=True):
                partition.abandon()
                os.replace(partition.directory, target)
            self._fileio.fsync_dir(self.data_dir)
        for target in doomed:
            shutil.rmtree(target)

    def alter_topic_config(self, name: str, changes: Mapping[str, str | None]) -> TopicInfo:
        """Set (or with ``None``, reset to default) config keys; applies to open partitions."""
        with self._lock:
            topic = self._get(name)
            overrides = dict(topic.info.overrides)
            for key, value in changes.items():
                if value is None:
                    overrides.pop(key, None)
                else:
                    overrides[key] = str(value)
            config = TopicConfig.from_dict(overrides, base=self._default_config)
            info = TopicInfo(name, topic.info.partitions, config, overrides)
            topic.info = info
            for partition in topic.partitions:
                partition.config = config
            self._write_metadata()
            return info

    def list_topics(self, *, include_internal: bool = False) -> list[TopicInfo]:
        return [
            t.info
            for name, t in sorted(self._topics.items())
            if include_internal or not name.startswith(INTERNAL_TOPIC_PREFIX)
        ]

    def describe_topic(self, name: str) -> TopicInfo:
        return self._get(name).info

    def has_topic(self, name: str) -> bool:
        return name in self._topics

    def _get(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicError(name)
        return topic

    def partition(self, topic: str, partition: int) -> PartitionLog:
        logs = self._get(topic).partitions
        if not 0 <= partition < len(logs):
            raise UnknownPartitionError(topic, partition, len(logs))
        return logs[partition]

    def partitions(self, topic: str) -> list[PartitionLog]:
        return list(self._get(topic).partitions)

    # ------------------------------------------------------------------ data

    def append(self, topic: str, partition: int, batch: bytes | bytearray) -> AppendResult:
        return self.partition(topic, partition).append(batch)

    def read(self, topic: str, partition: int, offset: int, max_bytes: int) -> ReadResult:
        return self.partition(topic, partition).read(offset, max_bytes)

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """First offset with a timestamp >= ``timestamp_ms``; the high watermark if none."""
        log_ = self.partition(topic, partition)
        found = log_.offset_for_time(timestamp_ms)
        return log_.high_watermark if found is None else found
