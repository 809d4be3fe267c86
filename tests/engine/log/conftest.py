"""Helpers shared by the partition-log tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.config import TopicConfig
from engine.log.partition_log import PartitionLog
from engine.records.batch import NewRecord, encode_batch


def make_batch(
    n: int = 10,
    *,
    size: int = 100,
    tag: int = 0,
    timestamp: int | None = 1_700_000_000_000,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    keys: bool = False,
) -> bytes:
    """A batch of ``n`` records whose values identify (tag, index)."""
    records = [
        NewRecord(
            value=f"{tag}:{i}:".encode().ljust(size, b"x"),
            key=f"k{i % 7}".encode() if keys else None,
            timestamp=timestamp,
        )
        for i in range(n)
    ]
    return encode_batch(
        records,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def open_log(tmp_path: Path, clock: ManualClock) -> Callable[..., PartitionLog]:
    """Open the partition in ``tmp_path/p-0`` with config overrides."""

    def opener(**overrides: str | int) -> PartitionLog:
        config = TopicConfig.from_dict({k.replace("_", "."): v for k, v in overrides.items()})
        return PartitionLog.open(tmp_path / "p-0", config, clock=clock)

    return opener
