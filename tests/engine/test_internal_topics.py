"""The shared replay of internal state topics: keyed records only, each once, in log order."""

from __future__ import annotations

from pathlib import Path

from engine.broker import Broker
from engine.internal_topics import ensure_internal_topic, keyed_records
from engine.records.batch import encode_batch
from engine.records.record import NewRecord

_CONFIG = {"cleanup.policy": "compact"}


def test_ensure_is_idempotent_and_replay_yields_keyed_records(tmp_path: Path) -> None:
    broker = Broker.open(tmp_path, background=False)
    try:
        ensure_internal_topic(broker, "__state", 1, _CONFIG)
        ensure_internal_topic(broker, "__state", 1, _CONFIG)  # exists: nothing happens
        assert broker.describe_topic("__state").partitions == 1
        log = broker.partition("__state", 0)
        log.append(encode_batch([NewRecord(b"v0", key=b"a"), NewRecord(b"skip")]))
        log.append(encode_batch([NewRecord(None, key=b"a"), NewRecord(b"v2", key=b"b")]))
        # tiny reads: every batch is fetched on its own, none is repeated
        replayed = [(r.offset, r.key, r.value) for r in keyed_records(log, read_bytes=1)]
        assert replayed == [(0, b"a", b"v0"), (2, b"a", None), (3, b"b", b"v2")]
    finally:
        broker.close()
