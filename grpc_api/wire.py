"""Hand-written protobuf encoding for the responses that carry stored batch bytes.

A FetchResponse or SubscribeResponse is mostly one ``bytes`` field of up to
``max_fetch_bytes``. Building it as a generated message copies the batches into the message
and copies them again when gRPC serializes it (and each copy of several MiB is a fresh large
allocation). :class:`RawBatches` instead keeps the bytes as the engine returned them and
:func:`batches_serializer` writes the wire format in one ``bytes.join``: the field tags and
lengths, the batch bytes, then the three offsets. The output is byte for byte what
``SerializeToString`` produces (fields in number order, zero scalars omitted), so clients see
ordinary messages; ``tests/grpc_api/test_wire.py`` checks that against the generated code.
Anything else (decoded fetches) is serialized by the generated code as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RawBatches", "batches_serializer", "encode_varint"]

_WIRE_VARINT = 0
_WIRE_LENGTH_DELIMITED = 2
_UINT64_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RawBatches:
    """A FetchResponse / SubscribeResponse with undecoded batches, serialized by hand."""

    record_batches: bytes
    high_watermark: int
    log_start_offset: int
    next_offset: int


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take ten bytes (two's complement)."""
    value &= _UINT64_MASK
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def batches_serializer(message_type: Any) -> Callable[[Any], bytes]:
    """A response serializer for ``message_type`` that writes :class:`RawBatches` by hand.

    ``message_type`` is FetchResponse or SubscribeResponse; the field numbers come from its
    descriptor, so they cannot drift from the .proto.
    """
    fields = message_type.DESCRIPTOR.fields_by_name
    data_tag = encode_varint(fields["record_batches"].number << 3 | _WIRE_LENGTH_DELIMITED)
    offset_tags = [
        encode_varint(fields[name].number << 3 | _WIRE_VARINT)
        for name in ("high_watermark", "log_start_offset", "next_offset")
    ]
    numbers = [fields[name].number for name in
               ("record_batches", "high_watermark", "log_start_offset", "next_offset")]
    if numbers != sorted(numbers) or len(fields) > 5:  # pragma: no cover  (a schema change)
        raise AssertionError(f"{message_type.DESCRIPTOR.full_name} changed; update wire.py")
    high_watermark_tag, log_start_tag, next_offset_tag = offset_tags

    def serialize(response: Any) -> bytes:
        if not isinstance(response, RawBatches):
            data: bytes = response.SerializeToString()
            return data
        parts: list[bytes] = []
        data = response.record_batches
        if data:
            parts += (data_tag, encode_varint(len(data)), data)
        if response.high_watermark:
            parts += (high_watermark_tag, encode_varint(response.high_watermark))
        if response.log_start_offset:
            parts += (log_start_tag, encode_varint(response.log_start_offset))
        if response.next_offset:
            parts += (next_offset_tag, encode_varint(response.next_offset))
        return b"".join(parts)

    return serialize
