"""CRC-32C (Castagnoli), the checksum of Kafka RecordBatch v2.

Byte layout: none of its own. The checksum is the reflected CRC-32C (polynomial 0x1EDC6F41,
init 0xFFFFFFFF, final XOR 0xFFFFFFFF) stored as a big-endian uint32 at byte 17 of a batch and
computed over bytes 21..end (attributes to the last record). ``crc32c(b"123456789")`` is
``0xE3069283``.

The ``crc32c`` package uses SSE4.2 / ARMv8 CRC instructions when present (many GB/s), so a CRC
over a whole batch costs microseconds and the broker can afford it on every produce and fetch.
"""

from __future__ import annotations

from typing import TypeAlias

from crc32c import crc32c as _crc32c

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Any contiguous byte buffer the codec reads without copying."""


def crc32c(data: BytesLike, value: int = 0) -> int:
    """CRC-32C of ``data``; pass a previous result as ``value`` to continue it.

    Continuing lets the encoder checksum the header fields and the records payload without
    joining them first: ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    return _crc32c(data, value)
