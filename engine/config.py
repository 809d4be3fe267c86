"""Per-topic configuration under Kafka's key names, validated once when it is built.

Keys, defaults and allowed values (Python attributes are the keys in snake_case)::

    segment.bytes            1 GiB     1024 .. 2**31 - 1     roll the active segment at this size
    segment.ms               7 days    >= 1                  ... or when its first batch is this old
    segment.index.bytes      10 MiB    4096 .. 2**31 - 1     preallocation of each index file
    segment.preallocate.bytes  1 MiB   0 .. 2**31 - 1        log space reserved ahead of appends
    index.interval.bytes     4096      >= 0                  log bytes between offset-index entries
    retention.ms             7 days    >= -1 (-1: forever)   delete sealed segments older than this
    retention.bytes          -1        >= -1 (-1: no limit)  ... or beyond this partition size
    cleanup.policy           delete    delete | compact | compact,delete
    delete.retention.ms      1 day     >= 0                  how long compaction keeps tombstones
    min.compaction.lag.ms    0         >= 0                  newer records are not compacted
    durability               fsync     fsync | async         see TopicConfig.durability
    flush.ms                 1000      >= 1                  fsync interval under durability=async
    max.message.bytes        8 MiB     1024 .. 256 MiB       largest batch a producer may send
    message.timestamp.type   CreateTime  CreateTime | LogAppendTime

``segment.bytes`` stops at 2**31 - 1 because index entries hold byte positions as uint32: a
segment can exceed ``segment.bytes`` by at most one batch (``max.message.bytes``), and the sum
stays below 2**32. Millisecond and byte-count keys without a stated maximum are int64.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.errors import InvalidConfigError

__all__ = ["DEFAULTS", "KNOWN_KEYS", "TopicConfig"]

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
_DAY_MS = 24 * 60 * 60 * 1000
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")  # not int(): it also takes "1_000" and non-ASCII digits

CleanupPolicy = Literal["delete", "compact", "compact,delete"]
Durability = Literal["fsync", "async"]
TimestampType = Literal["CreateTime", "LogAppendTime"]


@dataclass(frozen=True, slots=True)
class _Key:
    """How one key is spelled, stored and checked."""

    key: str
    attr: str
    minimum: int = 0
    maximum: int = _INT64_MAX
    choices: tuple[str, ...] = ()
    note: str = ""

    @property
    def allowed(self) -> str:
        if self.choices:
            return "allowed: " + " or ".join(repr(c) for c in self.choices) + self.note
        return f"allowed: an integer from {self.minimum} to {self.maximum}{self.note}"


_KEYS: tuple[_Key, ...] = (
    _Key(
        "cleanup.policy",
        "cleanup_policy",
        choices=("delete", "compact", "compact,delete"),
        note=" ('delete,compact' is the same as 'compact,delete')",
    ),
    _Key("delete.retention.ms", "delete_retention_ms"),
    _Key(
        "durability",
        "durability",
        choices=("fsync", "async"),
        note=" ('async' survives a broker crash but not a power loss)",
    ),
    _Key("flush.ms", "flush_ms", minimum=1),
    _Key("index.interval.bytes", "index_interval_bytes", maximum=_INT32_MAX),
    _Key("max.message.bytes", "max_message_bytes", minimum=_KIB, maximum=256 * _MIB),
    _Key(
        "message.timestamp.type", "message_timestamp_type", choices=("CreateTime", "LogAppendTime")
    ),
    _Key("min.compaction.lag.ms", "min_compaction_lag_ms"),
    _Key("retention.bytes", "retention_bytes", minimum=-1, note="; -1 means no size limit"),
    _Key("retention.ms", "retention_ms", minimum=-1, note="; -1 means keep forever"),
    _Key("segment.bytes", "segment_bytes", minimum=_KIB, maximum=_INT32_MAX),
    _Key("segment.index.bytes", "segment_index_bytes", minimum=4 * _KIB, maximum=_INT32_MAX),
    _Key("segment.ms", "segment_ms", minimum=1),
    _Key("segment.preallocate.bytes", "segment_preallocate_bytes", minimum=0,
         maximum=_INT32_MAX, note="; 0 turns preallocation off"),
)
_BY_KEY = {k.key: k for k in _KEYS}

KNOWN_KEYS: tuple[str, ...] = tuple(k.key for k in _KEYS)
"""Every accepted key, sorted."""


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic's settings; every instance is valid (checked in ``__post_init__``).

    Build one with :meth:`from_dict` from Kafka-style keys; the attributes are the same keys
    in snake_case. See the module docstring for defaults and ranges.

    Attributes:
        durability: ``"fsync"`` acknowledges a produce after its bytes are fsynced (group
            commit: one fsync covers every append that arrived meanwhile); nothing acked is
            lost, even on power loss. ``"async"`` acknowledges once the bytes are in the page
            cache and fsyncs every ``flush_ms``: it survives kill -9 of the broker but NOT a
            power loss or kernel crash, which can lose the last ``flush_ms`` of acked data.
    """

    segment_bytes: int = _GIB
    segment_ms: int = 7 * _DAY_MS
    segment_index_bytes: int = 10 * _MIB
    segment_preallocate_bytes: int = _MIB
    index_interval_bytes: int = 4096
    retention_ms: int = 7 * _DAY_MS
    retention_bytes: int = -1
    cleanup_policy: CleanupPolicy = "delete"
    delete_retention_ms: int = _DAY_MS
    min_compaction_lag_ms: int = 0
    durability: Durability = "fsync"
    flush_ms: int = 1000
    max_message_bytes: int = 8 * _MIB
    message_timestamp_type: TimestampType = "CreateTime"

    def __post_init__(self) -> None:
        for spec in _KEYS:
            value = getattr(self, spec.attr)
            checked = _check(spec, value, value)
            if checked != value:  # a non-canonical spelling, e.g. "delete,compact"
                object.__setattr__(self, spec.attr, checked)

    @classmethod
    def from_dict(
        cls, values: Mapping[str, str | int], base: TopicConfig | None = None
    ) -> TopicConfig:
        """``base`` (default :data:`DEFAULTS`) with the keys in ``values`` overridden.

        Values may be strings (as they arrive from the CLI, the API or ``topics.json``) or
        ints for the integer keys.

        Raises:
            InvalidConfigError: an unknown key (the message lists the valid ones) or a value of
                the wrong type or out of range (the message names the key, the value and what
                is allowed).
        """
        changes: dict[str, Any] = {}  # each value is checked against its own key's rule
        for key, raw in values.items():
            spec = _BY_KEY.get(key) if isinstance(key, str) else None
            if spec is None:
                raise InvalidConfigError(_unknown_key_message(key))
            changes[spec.attr] = _parse(spec, raw)
        return dataclasses.replace(base if base is not None else DEFAULTS, **changes)

    def to_dict(self) -> dict[str, str]:
        """Every key with its value as a string; ``from_dict(c.to_dict()) == c``."""
        return {spec.key: str(getattr(self, spec.attr)) for spec in _KEYS}

    @property
    def compact(self) -> bool:
        """Compaction keeps the latest record per key."""
        return "compact" in self.cleanup_policy.split(",")

    @property
    def delete(self) -> bool:
        """Retention deletes whole sealed segments by age and size."""
        return "delete" in self.cleanup_policy.split(",")


def _unknown_key_message(key: object) -> str:
    close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown topic config key {key!r}{hint}; valid keys: {', '.join(KNOWN_KEYS)}"


def _parse(spec: _Key, raw: object) -> int | str:
    """Turn a raw value into the attribute's type, or say what is wrong with it."""
    if spec.choices:
        if not isinstance(raw, str):
            raise InvalidConfigError(f"{spec.key}={raw!r} is not a string; {spec.allowed}")
        return _check(spec, raw.strip(), raw)
    if isinstance(raw, str):
        text = raw.strip()
        if not _INTEGER.fullmatch(text):
            raise InvalidConfigError(f"{spec.key}={raw!r} is not an integer; {spec.allowed}")
        return _check(spec, int(text), raw)
    return _check(spec, raw, raw)


def _check(spec: _Key, value: object, raw: object) -> int | str:
    """``value`` in canonical form if ``spec`` allows it; ``raw`` is what the user wrote."""
    if spec.choices:
        if isinstance(value, str):
            canonical = _canonical_policy(value) if spec.key == "cleanup.policy" else value
            if canonical in spec.choices:
                return canonical
        raise InvalidConfigError(f"{spec.key}={raw!r} is not allowed; {spec.allowed}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidConfigError(f"{spec.key}={raw!r} is not an integer; {spec.allowed}")
    if not spec.minimum <= value <= spec.maximum:
        raise InvalidConfigError(f"{spec.key}={raw!r} is out of range; {spec.allowed}")
    return value


def _canonical_policy(value: str) -> str:
    """``"delete, compact"`` -> ``"compact,delete"``; anything unknown is returned as is."""
    parts = [part.strip() for part in value.split(",")]
    if len(parts) == len(set(parts)) and set(parts) <= {"compact", "delete"}:
        return ",".join(sorted(parts))
    return value


DEFAULTS = TopicConfig()
"""Every key at its default."""
