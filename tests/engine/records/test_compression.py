"""Compression codecs: Kafka-compatible framing, bounded decompression, and failure types.

The properties run 2,000 examples each (RELIABILITY-PLAN T7): round trips with the limit
inclusive, and sizes declared in stream headers (zstd content size, snappy lengths, lz4
content size) that no input of that length could produce, which must be refused before
anything is allocated for them (tracemalloc peak).
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cramjam
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.records.compression import (
    XERIAL_BLOCK_SIZE,
    XERIAL_HEADER,
    Codec,
    compress,
    decompress,
)
from engine.records.errors import (
    BatchTooLargeError,
    InvalidBatchError,
    RecordError,
    UnsupportedCodecError,
)

COMPRESSED = [Codec.GZIP, Codec.SNAPPY, Codec.LZ4, Codec.ZSTD]
TEXT = b"".join(
    b'{"id": %d, "user": "u-%d", "event": "click"}\n' % (i, i % 97) for i in range(3000)
)
SAMPLES = [b"", b"x", os.urandom(1000), TEXT, os.urandom(70_000) + TEXT]


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("data", SAMPLES, ids=["empty", "one", "random", "text", "mixed"])
def test_round_trip(codec: Codec, data: bytes) -> None:
    packed = compress(codec, data)
    assert decompress(codec, packed, len(data)) == data
    assert decompress(codec, memoryview(packed), len(data) + 10) == data


@pytest.mark.parametrize("codec", COMPRESSED)
def test_compressible_input_shrinks(codec: Codec) -> None:
    assert len(compress(codec, TEXT)) < len(TEXT) // 3


def test_none_is_a_copy_and_still_bounded() -> None:
    data = bytearray(b"abc")
    assert compress(Codec.NONE, data) == b"abc"
    assert decompress(Codec.NONE, memoryview(data), 3) == b"abc"
    with pytest.raises(BatchTooLargeError, match="over the limit of 2 bytes"):
        decompress(Codec.NONE, data, 2)


def test_gzip_is_a_standard_gzip_stream() -> None:
    packed = compress(Codec.GZIP, TEXT)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == TEXT


def test_gzip_accepts_concatenated_members() -> None:
    packed = gzip.compress(b"first ") + gzip.compress(b"second")
    assert decompress(Codec.GZIP, packed, 100) == b"first second"


def test_snappy_uses_xerial_framing_like_the_java_client() -> None:
    data = TEXT + os.urandom(40_000)
    packed = compress(Codec.SNAPPY, data)
    assert packed[:16] == bytes.fromhex("82534e41505059000000000100000001")
    assert packed[:16] == XERIAL_HEADER
    pos, blocks = 16, []
    while pos < len(packed):
        (length,) = struct.unpack_from(">i", packed, pos)
        blocks.append(bytes(cramjam.snappy.decompress_raw(packed[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    assert pos == len(packed)
    assert all(len(block) == XERIAL_BLOCK_SIZE for block in blocks[:-1])
    assert b"".join(blocks) == data


def test_snappy_accepts_a_plain_raw_block() -> None:
    raw = bytes(cramjam.snappy.compress_raw(TEXT))
    assert decompress(Codec.SNAPPY, raw, len(TEXT)) == TEXT


def test_snappy_of_nothing_is_the_bare_header() -> None:
    assert compress(Codec.SNAPPY, b"") == XERIAL_HEADER
    assert decompress(Codec.SNAPPY, XERIAL_HEADER, 0) == b""


def test_lz4_frame_has_kafka_settings() -> None:
    packed = compress(Codec.LZ4, TEXT * 3)
    info = lz4.frame.get_frame_info(packed)
    assert info["block_linked"] is False
    assert info["content_checksum"] is False
    assert info["content_size"] == 0
    assert info["block_size"] == 64 * 1024
    assert lz4.frame.decompress(packed) == TEXT * 3


def test_zstd_is_one_standard_frame_with_its_size() -> None:
    packed = compress(Codec.ZSTD, TEXT)
    assert zstandard.frame_content_size(packed) == len(TEXT)
    assert zstandard.ZstdDecompressor().decompress(packed) == TEXT


def _zstd_streamed(data: bytes, **params: int) -> bytes:
    """A zstd frame without a content size, as the Java client's streaming writer makes."""
    if params:
        compression = zstandard.ZstdCompressionParameters.from_level(3, **params)
        compressor = zstandard.ZstdCompressor(compression_params=compression)
    else:
        compressor = zstandard.ZstdCompressor()
    stream = compressor.compressobj()
    packed = stream.compress(data) + stream.flush()
    assert zstandard.frame_content_size(packed) == -1
    return packed


def test_zstd_frame_without_content_size_decodes() -> None:
    data = TEXT * 20 + os.urandom(300_000)
    assert decompress(Codec.ZSTD, _zstd_streamed(data), len(data)) == data


def test_zstd_frame_demanding_a_huge_window_is_refused() -> None:
    packed = _zstd_streamed(b"abc" * 1000, window_log=27)
    with pytest.raises(InvalidBatchError, match="zstd payload does not decompress"):
        decompress(Codec.ZSTD, packed, 1 << 20)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_limit_is_inclusive(codec: Codec) -> None:
    packed = compress(codec, TEXT)
    assert decompress(codec, packed, len(TEXT)) == TEXT
    with pytest.raises(BatchTooLargeError) as info:
        decompress(codec, packed, len(TEXT) - 1)
    assert info.value.limit == len(TEXT) - 1
    assert codec.name.lower() in info.value.what


BOMB_SIZE = 32 * 1024 * 1024
LIMIT = 1024 * 1024


def _bomb(codec: Codec) -> bytes:
    zeros = bytes(BOMB_SIZE)
    if codec == Codec.ZSTD:
        return _zstd_streamed(zeros)  # no declared size: the streaming guard must stop it
    return compress(codec, zeros)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_compression_bomb_is_refused_without_allocating_it(codec: Codec) -> None:
    bomb = _bomb(codec)
    # gzip and zstd reach 1000:1; lz4 (at most ~255:1) and snappy (~21:1) cannot by design
    assert len(bomb) * (1000 if codec in {Codec.GZIP, Codec.ZSTD} else 20) < BOMB_SIZE
    tracemalloc.start()
    try:
        with pytest.raises(BatchTooLargeError, match="over the limit"):
            decompress(codec, bomb, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, f"peak {peak} bytes while refusing a {BOMB_SIZE}-byte bomb"


def test_zstd_declared_size_over_limit_is_refused_before_decoding() -> None:
    packed = compress(Codec.ZSTD, bytes(BOMB_SIZE))
    with pytest.raises(BatchTooLargeError) as info:
        decompress(Codec.ZSTD, packed, LIMIT)
    assert info.value.size == BOMB_SIZE


def test_snappy_block_declaring_too_much_is_refused() -> None:
    raw = bytes(cramjam.snappy.compress_raw(bytes(2 * LIMIT)))
    with pytest.raises(BatchTooLargeError):
        decompress(Codec.SNAPPY, raw, LIMIT)
    framed = compress(Codec.SNAPPY, bytes(2 * LIMIT))
    with pytest.raises(BatchTooLargeError):
        decompress(Codec.SNAPPY, framed, LIMIT)


GARBAGE = [b"\xff", b"garbage bytes, not a stream", random.Random(7).randbytes(500)]


@pytest.mark.parametrize("codec", COMPRESSED)
@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_is_invalid_with_the_codec_named(codec: Codec, garbage: bytes) -> None:
    with pytest.raises(InvalidBatchError, match=codec.name.lower()):
        decompress(codec, garbage, 1 << 20)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_empty_payload_is_invalid(codec: Codec) -> None:
    with pytest.raises(InvalidBatchError):
        decompress(codec, b"", 100)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_truncated_stream_is_invalid(codec: Codec) -> None:
    packed = compress(codec, TEXT)
    for cut in (1, 5, len(packed) // 2):
        with pytest.raises(InvalidBatchError):
            decompress(codec, packed[:-cut], 1 << 20)


def test_truncated_streamed_zstd_is_invalid() -> None:
    packed = _zstd_streamed(TEXT)
    with pytest.raises(InvalidBatchError, match="truncated"):
        decompress(Codec.ZSTD, packed[:-3], 1 << 20)


@pytest.mark.parametrize("codec", [Codec.GZIP, Codec.LZ4, Codec.ZSTD])
def test_trailing_bytes_are_invalid(codec: Codec) -> None:
    packed = compress(codec, TEXT) + b"extra"
    with pytest.raises(InvalidBatchError):
        decompress(codec, packed, 1 << 20)


def test_library_error_is_chained_as_cause() -> None:
    with pytest.raises(InvalidBatchError) as info:
        decompress(Codec.LZ4, b"not lz4 at all", 100)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (XERIAL_HEADER[:12], "header is 12 bytes"),
        (XERIAL_HEADER + b"\x00\x00", "length at byte 16 is truncated"),
        (XERIAL_HEADER + b"\xff\xff\xff\xff", "declares -1 bytes"),
        (XERIAL_HEADER + b"\x00\x00\x00\x00", "declares 0 bytes"),
        (XERIAL_HEADER + b"\x00\x00\x00\x09abc", "declares 9 bytes, 3 remain"),
    ],
)
def test_bad_xerial_framing_is_invalid(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidBatchError, match=message):
        decompress(Codec.SNAPPY, payload, 1 << 20)


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_unknown_codec_is_unsupported(codec: int) -> None:
    with pytest.raises(UnsupportedCodecError, match=f"codec {codec} is unknown"):
        compress(codec, b"x")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedCodecError):
        decompress(codec, b"x", 10)  # type: ignore[arg-type]


def test_codecs_are_safe_across_threads() -> None:
    inputs = [os.urandom(2000) + TEXT[: 1000 * i] for i in range(16)]

    def work(data: bytes) -> bool:
        return all(decompress(c, compress(c, data), len(data)) == data for c in COMPRESSED)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, inputs * 4))


# ---------------------------------------------------------------------------- properties

PROPERTY = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DEFAULT_LIMIT = 64 * 1024 * 1024  # DEFAULT_MAX_DECOMPRESSED_BYTES: what consumers decode with
PEAK_BOUND = 256 * 1024


def _peak_of(call: Callable[[], object]) -> tuple[object, int]:
    """``call()``'s result (or the RecordError subclass it raised) and tracemalloc's peak."""
    tracemalloc.start()
    try:
        try:
            result: object = call()
        except RecordError as exc:
            result = type(exc)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@PROPERTY
@given(codec=st.sampled_from(list(Codec)), chunk=st.binary(max_size=200), repeat=st.integers(1, 30))
def test_round_trip_and_inclusive_limit(codec: Codec, chunk: bytes, repeat: int) -> None:
    data = chunk * repeat  # repeats make it compressible, so every codec's matcher is used
    packed = compress(codec, data)
    assert decompress(codec, packed, len(data)) == data
    if data:
        with pytest.raises(BatchTooLargeError):
            decompress(codec, packed, len(data) - 1)


def _lz4_declaring(size: int) -> bytes:
    """A one-byte LZ4 frame whose header claims ``size`` bytes of content."""
    frame = bytearray(lz4.frame.compress(b"x", store_size=True))
    struct.pack_into("<Q", frame, 6, size)
    for checksum in range(256):  # the header checksum byte: the one lz4 accepts
        frame[14] = checksum
        try:
            if lz4.frame.get_frame_info(bytes(frame))["content_size"] == size:
                return bytes(frame)
        except RuntimeError:
            continue
    raise AssertionError("no header checksum fits")


def _zstd_declaring(size: int, tail: bytes) -> bytes:
    """A zstd frame header (single segment, 8-byte content size) claiming ``size`` bytes."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size) + tail


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _xerial_block(block: bytes) -> bytes:
    return XERIAL_HEADER + struct.pack(">i", len(block)) + block


DECLARING: dict[str, tuple[Codec, Callable[[int, bytes], bytes]]] = {
    "zstd-content-size": (Codec.ZSTD, _zstd_declaring),
    "snappy-raw-length": (Codec.SNAPPY, lambda size, tail: _uvarint(size) + tail),
    "xerial-block-length": (
        Codec.SNAPPY,
        lambda size, tail: XERIAL_HEADER + struct.pack(">i", size) + tail,
    ),
    "xerial-block-raw-length": (
        Codec.SNAPPY,
        lambda size, tail: _xerial_block(_uvarint(size) + tail),
    ),
    "lz4-content-size": (Codec.LZ4, lambda size, tail: _lz4_declaring(size) + tail),
}


@PROPERTY
@given(
    kind=st.sampled_from(sorted(DECLARING)),
    declared=st.integers(1 << 20, 2**31 - 1),
    tail=st.binary(max_size=24),  # short: no stream this long can expand to 1 MiB
)
def test_declared_sizes_past_the_input_are_refused_before_allocating(
    kind: str, declared: int, tail: bytes
) -> None:
    codec, build = DECLARING[kind]
    payload = build(declared, tail)
    result, peak = _peak_of(lambda: decompress(codec, payload, DEFAULT_LIMIT))
    assert result in (InvalidBatchError, BatchTooLargeError), f"{kind} {declared}: {result!r}"
    assert peak < PEAK_BOUND, f"{peak} bytes at peak refusing {kind} = {declared}"


@pytest.mark.parametrize("codec", COMPRESSED)
def test_memory_follows_the_output_not_the_limit(codec: Codec) -> None:
    """Regression: lz4 reserved the whole limit (64 MiB by default) for every frame."""
    packed = compress(codec, TEXT[:1000])
    result, peak = _peak_of(lambda: decompress(codec, packed, DEFAULT_LIMIT))
    assert result == TEXT[:1000]
    assert peak < PEAK_BOUND


def test_zstd_content_size_no_input_can_reach_is_refused() -> None:
    payload = _zstd_declaring(60 << 20, b"\x00" * 20)
    with pytest.raises(InvalidBatchError, match="declares 62914560 bytes from 33 bytes of input"):
        decompress(Codec.ZSTD, payload, DEFAULT_LIMIT)


def test_snappy_length_no_input_can_reach_is_refused() -> None:
    payload = _uvarint(60 << 20) + b"\x00" * 20
    with pytest.raises(InvalidBatchError, match="more than snappy can expand to"):
        decompress(Codec.SNAPPY, payload, DEFAULT_LIMIT)


@pytest.mark.parametrize("codec", [Codec.SNAPPY, Codec.ZSTD])
def test_the_densest_real_streams_pass_the_ratio_checks(codec: Codec) -> None:
    zeros = bytes(4 << 20)  # as compressible as input gets
    assert decompress(codec, compress(codec, zeros), len(zeros)) == zeros
