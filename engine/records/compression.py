"""Compression of the records section of a RecordBatch v2, framed as Kafka clients frame it.

With a codec set in attributes bits 0-2, every byte after ``recordsCount`` (byte 61 on) is one
compressed blob of the concatenated records. Framing per codec::

    1 gzip    a standard gzip stream (RFC 1952); concatenated members are accepted on decode
    2 snappy  xerial snappy-java framing, as the Java client writes it:
                82 53 4e 41 50 50 59 00   magic "\\x82SNAPPY\\x00"
                00 00 00 01               version 1 (int32 big-endian)
                00 00 00 01               minimum compatible version 1
                then blocks: int32 big-endian compressed length + one raw snappy block
                (each block holds up to 32 KiB of input)
              decode also accepts one plain raw snappy block (what some clients send)
    3 lz4     one LZ4 frame (version 01, independent 64 KiB blocks, no content size, no
              checksums: the settings of Kafka's KafkaLZ4BlockOutputStream)
    4 zstd    one standard zstd frame

Decompression reads untrusted bytes. It is bounded: output beyond ``max_bytes`` raises
:class:`BatchTooLargeError` before that much is allocated (gzip streams with an output cap, lz4
in output steps that double up to the cap, zstd checks the declared content size or streams in
steps sized so that one step cannot overshoot the cap by more than a few blocks, snappy checks
each block's declared length), so a compression bomb costs at most ``max_bytes`` of memory. A
declared size no input of that length can expand to (zstd content size, snappy block length)
is refused before anything is allocated for it, and memory otherwise follows the actual output,
not the cap. Any failure of a decompressor becomes :class:`InvalidBatchError`; no other
exception type escapes.
"""

from __future__ import annotations

import enum
import struct
import threading
import zlib

import cramjam
import lz4.frame
import zstandard

from engine.records.crc import BytesLike
from engine.records.errors import (
    BatchTooLargeError,
    InvalidBatchError,
    RecordError,
    UnsupportedCodecError,
)


class Codec(enum.IntEnum):
    """Compression codec ids, the value of attributes bits 0-2."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


XERIAL_MAGIC = b"\x82SNAPPY\x00"
XERIAL_HEADER = XERIAL_MAGIC + struct.pack(">ii", 1, 1)
XERIAL_BLOCK_SIZE = 32 * 1024
"""snappy-java's default block size; the Java client's SnappyOutputStream uses it."""

GZIP_LEVEL = 6  # java.util.zip.Deflater.DEFAULT_COMPRESSION
ZSTD_LEVEL = 3  # the zstd default, which the Java client also uses

_INT32 = struct.Struct(">i")
_ZSTD_MIN_WINDOW = 1 << 23  # what level 19 needs when the input size is unknown
_ZSTD_MAX_WINDOW = 1 << 27  # zstd's own default limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT)
_ZSTD_BLOCK = 128 * 1024  # largest zstd block output; a block needs >= 4 input bytes
_ZSTD_MAX_RATIO = _ZSTD_BLOCK // 4  # an RLE block: 3 header bytes and 1 byte -> 128 KiB
_ZSTD_MIN_HEADER = 6  # magic, frame header descriptor, 1-byte content size: no block output
_SNAPPY_MAX_RATIO = 22  # the densest snappy element copies 64 bytes for 3 (21.3:1)
_LZ4_FIRST_STEP = 64 * 1024  # least output cap of the first lz4 step; each next one doubles
_local = threading.local()


def compress(codec: Codec, data: BytesLike) -> bytes:
    """Compress ``data`` as Kafka clients do for ``codec`` (``NONE`` returns a copy)."""
    if codec == Codec.NONE:
        return bytes(data)
    if codec == Codec.GZIP:
        gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return gz.compress(data) + gz.flush()
    if codec == Codec.SNAPPY:
        return _xerial_compress(data)
    if codec == Codec.LZ4:
        framed: bytes = lz4.frame.compress(
            data,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            store_size=False,
        )
        return framed
    if codec == Codec.ZSTD:
        out: bytes = _zstd_compressor().compress(data)
        return out
    raise UnsupportedCodecError(int(codec))


def decompress(codec: Codec, data: BytesLike, max_bytes: int) -> bytes:
    """Decompress one records payload, refusing to produce more than ``max_bytes``.

    Raises:
        BatchTooLargeError: the output would exceed ``max_bytes`` (checked before allocating).
        InvalidBatchError: the payload is not a valid stream of ``codec`` (truncated, garbage,
            trailing bytes); ``UnsupportedCodecError`` when ``codec`` is not 0..4.
    """
    if codec == Codec.NONE:
        if len(data) > max_bytes:
            raise BatchTooLargeError("uncompressed records", len(data), max_bytes)
        return bytes(data)
    decoder = _DECODERS.get(codec)
    if decoder is None:
        raise UnsupportedCodecError(int(codec))
    try:
        return decoder(data, max_bytes)
    except RecordError:
        raise
    except Exception as exc:
        # zlib.error, RuntimeError (lz4), ZstdError, cramjam.DecompressionError, ValueError,
        # OverflowError, MemoryError...: on untrusted bytes each one means "not a valid stream".
        name = Codec(codec).name.lower()
        raise InvalidBatchError(f"{name} payload does not decompress: {exc}") from exc


def _too_large(codec: str, size: int, limit: int) -> BatchTooLargeError:
    return BatchTooLargeError(f"decompressed {codec} records", size, limit)


def _gzip_decompress(data: BytesLike, max_bytes: int) -> bytes:
    """Decompress gzip members one after another, never past ``max_bytes + 1`` bytes."""
    parts: list[bytes] = []
    total = 0
    rest: BytesLike = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = inflater.decompress(rest, max_bytes - total + 1)
        total += len(out)
        if total > max_bytes:
            raise _too_large("gzip", total, max_bytes)
        if not inflater.eof:
            raise InvalidBatchError("gzip stream is truncated: it ends before its trailer")
        parts.append(out)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)


def _xerial_compress(data: BytesLike) -> bytes:
    view = memoryview(data)
    parts = [XERIAL_HEADER]
    pack = _INT32.pack
    for start in range(0, len(view), XERIAL_BLOCK_SIZE):
        block = bytes(cramjam.snappy.compress_raw(view[start : start + XERIAL_BLOCK_SIZE]))
        parts.append(pack(len(block)))
        parts.append(block)
    return b"".join(parts)


def _snappy_block(block: BytesLike, total: int, max_bytes: int) -> bytes:
    """One raw snappy block, after checking the length its header declares."""
    size = cramjam.snappy.decompress_raw_len(block)
    if total + size > max_bytes:
        raise _too_large("snappy", total + size, max_bytes)
    if size > _SNAPPY_MAX_RATIO * len(block):
        raise InvalidBatchError(
            f"snappy block declares {size} bytes from {len(block)} bytes of input, more than "
            "snappy can expand to: the block header is damaged"
        )
    return bytes(cramjam.snappy.decompress_raw(block))


def _snappy_decompress(data: BytesLike, max_bytes: int) -> bytes:
    """xerial-framed snappy, or a single raw snappy block when the magic is absent."""
    view = memoryview(data)
    if view[: len(XERIAL_MAGIC)] != XERIAL_MAGIC:
        return _snappy_block(view, 0, max_bytes)
    if len(view) < len(XERIAL_HEADER):
        raise InvalidBatchError(
            f"xerial snappy header is {len(view)} bytes, it needs {len(XERIAL_HEADER)}"
        )
    parts: list[bytes] = []
    total = 0
    pos = len(XERIAL_HEADER)
    end = len(view)
    while pos < end:
        if end - pos < 4:
            raise InvalidBatchError(f"xerial snappy block length at byte {pos} is truncated")
        (length,) = _INT32.unpack_from(view, pos)
        pos += 4
        if length <= 0 or length > end - pos:
            raise InvalidBatchError(
                f"xerial snappy block at byte {pos - 4} declares {length} bytes, {end - pos} remain"
            )
        block = _snappy_block(view[pos : pos + length], total, max_bytes)
        total += len(block)
        parts.append(block)
        pos += length
    return b"".join(parts)


def _lz4_decompress(data: BytesLike, max_bytes: int) -> bytes:
    """One LZ4 frame, decoded in output steps (4x the input, doubling), never past the cap.

    python-lz4 allocates a call's whole ``max_length`` before decoding, so a single call capped
    at ``max_bytes + 1`` would reserve the cap (64 MiB by default) for every batch, however
    small; the steps keep the allocation near the actual output.
    """
    inflater = lz4.frame.LZ4FrameDecompressor()
    parts: list[bytes] = []
    total = 0
    step = max(_LZ4_FIRST_STEP, 4 * len(data))  # most frames then need a single step
    chunk: BytesLike = data
    while True:
        out: bytes = inflater.decompress(chunk, max_length=min(step, max_bytes - total + 1))
        total += len(out)
        if total > max_bytes:
            raise _too_large("lz4", total, max_bytes)
        parts.append(out)
        if inflater.eof:
            break
        if inflater.needs_input or (not out and not chunk):
            raise InvalidBatchError("lz4 frame is truncated: it ends before its end mark")
        chunk = b""
        step *= 2
    if inflater.unused_data:
        raise InvalidBatchError(
            f"lz4 frame is followed by {len(inflater.unused_data)} unexpected bytes"
        )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _zstd_decompress(data: BytesLike, max_bytes: int) -> bytes:
    """One zstd frame; a declared content size is checked before anything is decoded."""
    declared = zstandard.frame_content_size(data)
    if declared > max_bytes:
        raise _too_large("zstd", declared, max_bytes)
    if declared > _ZSTD_MAX_RATIO * (len(data) - _ZSTD_MIN_HEADER):
        raise InvalidBatchError(
            f"zstd frame declares {declared} bytes from {len(data)} bytes of input, more than "
            "zstd can expand to: the frame header is damaged"
        )
    if declared >= 0:
        # The decompressor allocates exactly ``declared`` bytes and fails on any mismatch.
        out: bytes = _zstd_decompressor(max_bytes).decompress(data, allow_extra_data=False)
        return out
    # No content size (the Java client streams): feed the input in steps small enough that one
    # step yields at most the remaining budget plus two blocks, and stop once over the limit.
    inflater = _zstd_decompressor(max_bytes).decompressobj()
    view = memoryview(data)
    parts: list[bytes] = []
    total = 0
    pos = 0
    while pos < len(view):
        step = max(64, (max_bytes - total) * 4 // _ZSTD_BLOCK)
        chunk = inflater.decompress(view[pos : pos + step])
        pos += step
        total += len(chunk)
        if total > max_bytes:
            raise _too_large("zstd", total, max_bytes)
        parts.append(chunk)
        if inflater.eof:
            break
    if not inflater.eof:
        raise InvalidBatchError("zstd frame is truncated: it ends before its last block")
    if pos < len(view) or inflater.unused_data:
        raise InvalidBatchError("zstd frame is followed by unexpected bytes")
    return b"".join(parts)


def _zstd_compressor() -> zstandard.ZstdCompressor:
    """The calling thread's compressor (contexts are not thread safe, and costly to build)."""
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.compressor = compressor
    return compressor


def _zstd_decompressor(max_bytes: int) -> zstandard.ZstdDecompressor:
    """The calling thread's decompressor whose window limit fits ``max_bytes``.

    A frame may ask for a window far larger than its output; the limit (the next power of two
    of ``max_bytes``, between 8 MiB and zstd's default 128 MiB) keeps that allocation bounded.
    """
    window = min(max(_ZSTD_MIN_WINDOW, 1 << max(0, max_bytes - 1).bit_length()), _ZSTD_MAX_WINDOW)
    cache: dict[int, zstandard.ZstdDecompressor] | None = getattr(_local, "decompressors", None)
    if cache is None:
        cache = {}
        _local.decompressors = cache
    decompressor = cache.get(window)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=window)
        cache[window] = decompressor
    return decompressor


_DECODERS = {
    Codec.GZIP: _gzip_decompress,
    Codec.SNAPPY: _snappy_decompress,
    Codec.LZ4: _lz4_decompress,
    Codec.ZSTD: _zstd_decompress,
}
