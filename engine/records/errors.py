"""Errors of the record codec, the leaf package of the engine.

Tree (``engine.errors`` re-exports these beside the storage errors)::

    RecordError                       root; bytes that are not a valid RecordBatch v2
    +-- InvalidBatchError             a length, count or field that contradicts the buffer
    |   +-- UnsupportedMagicError     magic byte other than 2
    |   +-- UnsupportedCodecError     compression bits not in 0..4
    +-- CorruptBatchError             stored CRC-32C differs from the computed one
    +-- BatchTooLargeError            a declared or decompressed size over the caller's limit

None of them is retriable: sending the same bytes again gives the same answer.
"""

from __future__ import annotations


class RecordError(Exception):
    """Root of the record codec errors."""

    retriable = False


class InvalidBatchError(RecordError):
    """The batch is structurally wrong; ``reason`` says which field and why."""

    def __init__(self, reason: str, position: int = 0) -> None:
        super().__init__(f"invalid record batch at byte {position}: {reason}")
        self.reason = reason
        self.position = position


class UnsupportedMagicError(InvalidBatchError):
    """Only RecordBatch v2 (magic 2) is stored and served."""

    def __init__(self, magic: int, position: int = 0) -> None:
        super().__init__(
            f"magic byte is {magic}, only RecordBatch v2 (magic 2) is supported", position
        )
        self.magic = magic


class UnsupportedCodecError(InvalidBatchError):
    """Compression attribute bits name a codec that does not exist."""

    def __init__(self, codec: int, position: int = 0) -> None:
        super().__init__(
            f"compression codec {codec} is unknown (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)",
            position,
        )
        self.codec = codec


class CorruptBatchError(RecordError):
    """The CRC-32C over attributes..end does not match the stored one."""

    def __init__(self, position: int, stored_crc: int, computed_crc: int) -> None:
        super().__init__(
            f"corrupt record batch at byte {position}: stored CRC-32C {stored_crc:#010x}, "
            f"computed {computed_crc:#010x}"
        )
        self.position = position
        self.stored_crc = stored_crc
        self.computed_crc = computed_crc


class BatchTooLargeError(RecordError):
    """A size exceeds the configured bound; checked before allocating."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.what = what
        self.size = size
        self.limit = limit
