"""Coverage-guided fuzzing of the RecordBatch v2 decoders with atheris (RELIABILITY-PLAN T7).

Nightly (1,000,000 executions)::

    python tests/fuzz/atheris_batch.py -atheris_runs=1000000

Every libFuzzer flag works (``-max_len``, ``-seed``, corpus directories, ...). Without a corpus
directory the harness seeds a fresh temporary one with valid batches (every codec; keys,
headers, null values, producer ids, uniform and varied layouts), so mutation starts from the
real format rather than from nothing. Unless given, ``-timeout=1`` (an input running over 1 s
is a hang) and ``-rss_limit_mb=256`` (peak RSS) apply: the plan's pass criteria.

An input fails when:

- any decoder (``decode_batch``, ``decode_values``, ``decode_batches``, ``iter_batches``,
  ``validate_batch``, ``validate_produce_batch``, ``decompress`` of each codec) raises anything
  but a ``RecordError`` (IndexError, struct.error, MemoryError, a library's own error ...);
- ``validate_produce_batch`` accepts a batch that ``decode_batch`` then refuses: the broker
  would store bytes that fail every consumer.

The first input byte picks the codec handed to ``decompress``; the rest goes to everything.
``tests/fuzz/test_atheris_batch.py`` runs a few thousand executions in CI.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402  (after the path fix above)

with atheris.instrument_imports(include=["engine.records"]):
    from engine.records.batch import (
        decode_batch,
        decode_batches,
        decode_values,
        encode_batch,
        encode_values,
        iter_batches,
        validate_batch,
        validate_produce_batch,
    )
    from engine.records.compression import Codec, compress, decompress
    from engine.records.errors import RecordError
    from engine.records.record import Header, NewRecord

MAX_DECOMPRESSED_BYTES = 1 << 20  # decompress() alone; the batch decoders use their defaults
DEFAULT_FLAGS = ("-timeout=1", "-rss_limit_mb=256")
TS = 1_700_000_000_000


def fuzz_one(data: bytes) -> None:
    """One execution: every decoder on ``data``; raises on a finding."""
    if not data:
        return
    codec = Codec(data[0] % 5)
    _refused_or(decompress, codec, data[1:], MAX_DECOMPRESSED_BYTES)
    produced = _refused_or(validate_produce_batch, data)
    if produced is not None:
        header, records = decode_batch(data)  # must not raise: it was accepted for storage
        if header != produced or len(records) != header.record_count:
            raise AssertionError(f"stored batch decodes differently: {header} vs {produced}")
    for verify in (True, False):
        _refused_or(decode_batch, data, verify_crc=verify)
        _refused_or(decode_values, data, verify_crc=verify)
    _refused_or(validate_batch, data)
    _refused_or(lambda: list(iter_batches(data)))
    _refused_or(lambda: list(decode_batches(data, verify_crc=False)))


def _refused_or(call: object, *args: object, **kwargs: object) -> object:
    """The call's result, or None when it raised a RecordError (the documented refusal)."""
    assert callable(call)
    try:
        return call(*args, **kwargs)
    except RecordError:
        return None


def seed_batches() -> list[bytes]:
    """Valid batches covering the layouts the decoders branch on."""
    plain = [NewRecord(b"value-%d" % i, key=b"k%d" % i if i % 2 else None) for i in range(5)]
    rich = [
        NewRecord(b"v", key=b"key", headers=(Header("h", b"x"), Header("n\u00e9", None))),
        NewRecord(None, timestamp=TS - 5),
        NewRecord(b"", key=b"", timestamp=TS + 9),
    ]
    seeds = []
    for codec in Codec:
        seeds.append(encode_batch(plain, codec=codec, timestamp=TS))
        seeds.append(encode_batch(rich, codec=codec, timestamp=TS))
        seeds.append(encode_values([b"u" * 10] * 40, codec=codec, timestamp=TS))  # uniform
        seeds.append(
            encode_batch(plain[:2], codec=codec, timestamp=TS, producer_id=7,
                         producer_epoch=0, base_sequence=3)
        )
    seeds.append(seeds[0] + seeds[1])  # two batches back to back
    seeds.extend(bytes([codec]) + compress(codec, b"records " * 20) for codec in Codec)
    return seeds


def main(argv: list[str]) -> None:
    args = list(argv)
    for flag in DEFAULT_FLAGS:
        if not any(arg.startswith(flag.split("=")[0] + "=") for arg in args[1:]):
            args.append(flag)
    if not any(not arg.startswith("-") for arg in args[1:]):  # no corpus directory given
        corpus = Path(tempfile.mkdtemp(prefix="atheris-batch-"))
        for i, seed in enumerate(seed_batches()):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
