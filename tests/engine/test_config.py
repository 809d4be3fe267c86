"""TopicConfig: every key's good and bad values, defaults, round trips."""

from __future__ import annotations

import dataclasses
import re

import pytest

from engine.config import DEFAULTS, KNOWN_KEYS, TopicConfig
from engine.errors import InvalidConfigError

GiB = 1024**3
MiB = 1024**2
DAY_MS = 86_400_000
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# (key, value as given, attribute, value stored)
GOOD = [
    ("segment.bytes", "1024", "segment_bytes", 1024),
    ("segment.bytes", 1024, "segment_bytes", 1024),
    ("segment.bytes", str(INT32_MAX), "segment_bytes", INT32_MAX),
    ("segment.bytes", " 65536 ", "segment_bytes", 65536),
    ("segment.bytes", "+4096", "segment_bytes", 4096),
    ("segment.ms", "1", "segment_ms", 1),
    ("segment.ms", str(INT64_MAX), "segment_ms", INT64_MAX),
    ("segment.preallocate.bytes", "0", "segment_preallocate_bytes", 0),
    ("segment.preallocate.bytes", str(2**31 - 1), "segment_preallocate_bytes", 2**31 - 1),
    ("segment.index.bytes", "4096", "segment_index_bytes", 4096),
    ("segment.index.bytes", str(INT32_MAX), "segment_index_bytes", INT32_MAX),
    ("index.interval.bytes", "0", "index_interval_bytes", 0),
    ("index.interval.bytes", 100_000, "index_interval_bytes", 100_000),
    ("retention.ms", "-1", "retention_ms", -1),
    ("retention.ms", "0", "retention_ms", 0),
    ("retention.ms", 3_600_000, "retention_ms", 3_600_000),
    ("retention.bytes", "-1", "retention_bytes", -1),
    ("retention.bytes", str(10 * GiB), "retention_bytes", 10 * GiB),
    ("cleanup.policy", "delete", "cleanup_policy", "delete"),
    ("cleanup.policy", "compact", "cleanup_policy", "compact"),
    ("cleanup.policy", "compact,delete", "cleanup_policy", "compact,delete"),
    ("cleanup.policy", "delete,compact", "cleanup_policy", "compact,delete"),
    ("cleanup.policy", "delete, compact", "cleanup_policy", "compact,delete"),
    ("delete.retention.ms", "0", "delete_retention_ms", 0),
    ("delete.retention.ms", "86400000", "delete_retention_ms", DAY_MS),
    ("min.compaction.lag.ms", "0", "min_compaction_lag_ms", 0),
    ("min.compaction.lag.ms", "60000", "min_compaction_lag_ms", 60_000),
    ("durability", "fsync", "durability", "fsync"),
    ("durability", "async", "durability", "async"),
    ("flush.ms", "1", "flush_ms", 1),
    ("flush.ms", 5000, "flush_ms", 5000),
    ("max.message.bytes", "1024", "max_message_bytes", 1024),
    ("max.message.bytes", str(256 * MiB), "max_message_bytes", 256 * MiB),
    ("message.timestamp.type", "CreateTime", "message_timestamp_type", "CreateTime"),
    ("message.timestamp.type", "LogAppendTime", "message_timestamp_type", "LogAppendTime"),
]

# (key, bad value, what the message must say)
BAD = [
    ("segment.bytes", "1023", "out of range; allowed: an integer from 1024 to 2147483647"),
    ("segment.bytes", str(INT32_MAX + 1), "out of range"),
    ("segment.bytes", "1e6", "is not an integer"),
    ("segment.bytes", "1_000_000", "is not an integer"),
    ("segment.bytes", "١٠٢٤٠", "is not an integer"),  # Arabic-Indic digits: int() takes them
    ("segment.bytes", "", "is not an integer"),
    ("segment.bytes", "1 GiB", "is not an integer"),
    ("segment.bytes", True, "is not an integer"),
    ("segment.bytes", 4096.0, "is not an integer"),
    ("segment.ms", "0", "out of range"),
    ("segment.ms", str(INT64_MAX + 1), "out of range"),
    ("segment.preallocate.bytes", "-1", "out of range"),
    ("segment.preallocate.bytes", str(2**31), "out of range"),
    ("segment.index.bytes", "4095", "out of range; allowed: an integer from 4096"),
    ("index.interval.bytes", "-1", "out of range"),
    ("retention.ms", "-2", "-1 means keep forever"),
    ("retention.bytes", "-2", "-1 means no size limit"),
    ("cleanup.policy", "", "is not allowed"),
    ("cleanup.policy", "Delete", "is not allowed"),
    ("cleanup.policy", "compact,", "is not allowed"),
    ("cleanup.policy", "delete,delete", "is not allowed"),
    ("cleanup.policy", "compact,delete,archive", "is not allowed"),
    ("cleanup.policy", 1, "is not a string"),
    ("delete.retention.ms", "-1", "out of range"),
    ("min.compaction.lag.ms", "-5", "out of range"),
    ("durability", "sync", "allowed: 'fsync' or 'async'"),
    ("durability", "FSYNC", "is not allowed"),
    ("flush.ms", "0", "out of range"),
    ("max.message.bytes", "1023", "out of range"),
    ("max.message.bytes", str(256 * MiB + 1), "out of range"),
    ("message.timestamp.type", "createtime", "'CreateTime' or 'LogAppendTime'"),
]


@pytest.mark.parametrize(("key", "raw", "attr", "stored"), GOOD)
def test_good_values(key: str, raw: str | int, attr: str, stored: int | str) -> None:
    config = TopicConfig.from_dict({key: raw})
    assert getattr(config, attr) == stored
    assert config.to_dict()[key] == str(stored)
    others = {k: v for k, v in config.to_dict().items() if k != key}
    assert others == {k: v for k, v in DEFAULTS.to_dict().items() if k != key}


@pytest.mark.parametrize(("key", "raw", "message"), BAD)
def test_bad_values_name_the_key_the_value_and_the_rule(
    key: str, raw: object, message: str
) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        TopicConfig.from_dict({key: raw})  # type: ignore[dict-item]
    text = str(caught.value)
    assert text.startswith(f"{key}={raw!r} ")
    assert message in text


def test_every_key_has_good_and_bad_cases() -> None:
    assert {key for key, *_ in GOOD} == set(KNOWN_KEYS)
    assert {key for key, *_ in BAD} == set(KNOWN_KEYS)


def test_defaults() -> None:
    assert TopicConfig() == DEFAULTS
    assert DEFAULTS.to_dict() == {
        "cleanup.policy": "delete",
        "delete.retention.ms": str(DAY_MS),
        "durability": "fsync",
        "flush.ms": "1000",
        "index.interval.bytes": "4096",
        "max.message.bytes": str(8 * MiB),
        "message.timestamp.type": "CreateTime",
        "min.compaction.lag.ms": "0",
        "retention.bytes": "-1",
        "retention.ms": str(7 * DAY_MS),
        "segment.bytes": str(GiB),
        "segment.index.bytes": str(10 * MiB),
        "segment.ms": str(7 * DAY_MS),
        "segment.preallocate.bytes": str(MiB),
    }
    assert TopicConfig.from_dict({}) == DEFAULTS


def test_known_keys_are_sorted_and_match_the_fields() -> None:
    assert list(KNOWN_KEYS) == sorted(KNOWN_KEYS)
    fields = {f.name for f in dataclasses.fields(TopicConfig)}
    assert {key.replace(".", "_") for key in KNOWN_KEYS} == fields


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        TopicConfig.from_dict({"segment.byte": "2048"})
    text = str(caught.value)
    assert "unknown topic config key 'segment.byte'" in text
    assert "did you mean 'segment.bytes'?" in text
    for key in KNOWN_KEYS:
        assert key in text


def test_unknown_key_without_a_near_match() -> None:
    with pytest.raises(InvalidConfigError, match="unknown topic config key 'colour'; valid keys"):
        TopicConfig.from_dict({"colour": "blue"})


def test_snake_case_attribute_names_are_not_keys() -> None:
    with pytest.raises(InvalidConfigError, match="unknown topic config key 'segment_bytes'"):
        TopicConfig.from_dict({"segment_bytes": "2048"})


def test_round_trip_through_strings() -> None:
    config = TopicConfig.from_dict(
        {
            "segment.bytes": "2048",
            "cleanup.policy": "delete,compact",
            "durability": "async",
            "retention.ms": "-1",
            "message.timestamp.type": "LogAppendTime",
        }
    )
    values = config.to_dict()
    assert all(isinstance(v, str) for v in values.values())
    assert TopicConfig.from_dict(values) == config


def test_base_is_overridden_not_replaced() -> None:
    broker_defaults = TopicConfig.from_dict({"retention.ms": "60000", "segment.bytes": "4096"})
    topic = TopicConfig.from_dict({"segment.bytes": "8192"}, base=broker_defaults)
    assert topic.retention_ms == 60_000
    assert topic.segment_bytes == 8192
    assert broker_defaults.segment_bytes == 4096


def test_a_bad_value_among_good_ones_is_reported() -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("flush.ms='0'")):
        TopicConfig.from_dict({"segment.bytes": "2048", "flush.ms": "0"})


@pytest.mark.parametrize(
    ("policy", "compact", "delete"),
    [("delete", False, True), ("compact", True, False), ("compact,delete", True, True)],
)
def test_policy_properties(policy: str, compact: bool, delete: bool) -> None:
    config = TopicConfig.from_dict({"cleanup.policy": policy})
    assert (config.compact, config.delete) == (compact, delete)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("segment.bytes=10 is out of range")):
        TopicConfig(segment_bytes=10)
    with pytest.raises(InvalidConfigError, match="durability='maybe'"):
        TopicConfig(durability="maybe")  # type: ignore[arg-type]
    spelled = TopicConfig(cleanup_policy="delete,compact")  # type: ignore[arg-type]
    assert spelled.cleanup_policy == "compact,delete"


def test_frozen_and_hashable() -> None:
    config = TopicConfig.from_dict({"segment.bytes": "2048"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.segment_bytes = 4096  # type: ignore[misc]
    assert hash(config) == hash(TopicConfig.from_dict({"segment.bytes": 2048}))
