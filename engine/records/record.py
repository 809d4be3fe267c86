"""Kafka record layout (inside a RecordBatch v2): encoding and decoding of the records section.

Each record (varint = zig-zag varint, see ``varint``)::

    length          varint   bytes of the record after this field
    attributes      int8     unused, written 0
    timestampDelta  varlong  record timestamp - batch baseTimestamp
    offsetDelta     varint   record offset - batch baseOffset
    keyLength       varint   -1 for a null key
    key             bytes
    valueLength     varint   -1 for a null value
    value           bytes
    headerCount     varint
    headers         headerKeyLength varint | headerKey UTF-8 (never null)
                    | headerValueLength varint (-1 = null) | headerValue

    e.g. value b"hi", no key, no headers, offsetDelta 1, timestampDelta 0:
         10 | 00 | 00 | 02 | 01 | 04 68 69 | 00      (length 8 -> 10)

The section is the records back to back, exactly ``recordsCount`` of them, nothing after.

This is the per-record hot path of producers and consumers, so the loops bind names locally,
index a table of cached varints instead of encoding small ones, decode one- and two-byte varints
inline, and build :class:`Record` with ``tuple.__new__``. Decoding checks each length against
the bytes that remain before slicing; a short buffer surfaces as ``IndexError`` inside the loop
and leaves it as :class:`InvalidBatchError`.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt

from engine.records.errors import InvalidBatchError
from engine.records.varint import (
    INT32_MAX,
    NULL_VARINT,
    SMALL_VARINTS,
    decode_varint,
    decode_varlong,
    encode_varint,
    encode_varint_column,
    encode_varlong,
)

try:
    from engine.records import _crecords

    NATIVE = True
except ImportError:  # not built (no compiler at install): the Python record loop checks
    NATIVE = False

MIN_RECORD_BODY = 6  # attributes, timestampDelta, offsetDelta, keyLength, valueLength, count
UNIFORM_MIN_RECORDS = 32  # below this numpy's fixed cost exceeds the Python loop's
_VARINT_WIDTH_LIMITS = (64, 8192, 1 << 20, 1 << 27, INT32_MAX)  # offset deltas per width


@dataclass(frozen=True, slots=True)
class Header:
    """A record header: a UTF-8 key (never null) and an optional value."""

    key: str
    value: bytes | None


class Record(NamedTuple):
    """A decoded record.

    A NamedTuple rather than a frozen dataclass: it is built once per record on the consumer's
    hot path, and ``tuple.__new__`` costs about a seventh of a frozen dataclass ``__init__``.
    """

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to encode; ``timestamp`` None takes the batch's timestamp."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[Header, ...] = ()
    timestamp: int | None = None


def encode_records(
    records: Sequence[NewRecord], base_ts: int, default_ts: int
) -> tuple[bytes, int]:
    """Concatenated records and the largest timestamp among them."""
    parts: list[bytes] = []
    append = parts.append
    small = SMALL_VARINTS
    cached = len(small)
    max_ts = base_ts
    default_delta = encode_varlong(default_ts - base_ts)
    for index, record in enumerate(records):
        ts = record.timestamp
        if ts is None:
            ts = default_ts
            prefix = b"\x00" + default_delta
        else:
            delta = ts - base_ts
            prefix = b"\x00" + (small[delta] if 0 <= delta < cached else encode_varlong(delta))
        max_ts = max(max_ts, ts)
        prefix += small[index] if index < cached else encode_varint(index)
        key, value, headers = record.key, record.value, record.headers
        size = 0  # the key, the value and every varint but the length's own
        if key is None:
            prefix += NULL_VARINT
        else:
            klen = len(key)
            prefix += small[klen] if klen < cached else encode_varint(klen)
            size = klen
        if value is None:
            vpart = NULL_VARINT
        else:
            vlen = len(value)
            vpart = small[vlen] if vlen < cached else encode_varint(vlen)
            size += vlen
        hpart = _encode_headers(headers) if headers else b"\x00"
        size += len(prefix) + len(vpart) + len(hpart)
        append(small[size] if size < cached else encode_varint(size))
        append(prefix)
        if key is not None:
            append(key)
        append(vpart)
        if value is not None:
            append(value)
        append(hpart)
    return b"".join(parts), max_ts


def _encode_headers(headers: Sequence[Header]) -> bytes:
    parts = [encode_varint(len(headers))]
    for header in headers:
        key = header.key.encode("utf-8")
        parts.append(encode_varint(len(key)))
        parts.append(key)
        value = header.value
        if value is None:
            parts.append(NULL_VARINT)
        else:
            parts.append(encode_varint(len(value)))
            parts.append(value)
    return b"".join(parts)


def encode_plain(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None) -> bytes:
    """Header-less records with timestampDelta 0: the general loop minus what cannot vary."""
    parts: list[bytes] = []
    append = parts.append
    small = SMALL_VARINTS
    cached = len(small)
    no_keys = keys is None
    for index, value in enumerate(values):
        prefix = b"\x00\x00" + (small[index] if index < cached else encode_varint(index))
        key = None if no_keys else keys[index]  # type: ignore[index]
        size = 1  # headerCount; the key, the value and their varints follow
        if key is None:
            prefix += NULL_VARINT
        else:
            klen = len(key)
            prefix += small[klen] if klen < cached else encode_varint(klen)
            size += klen
        if value is None:
            vpart = NULL_VARINT
        else:
            vlen = len(value)
            vpart = small[vlen] if vlen < cached else encode_varint(vlen)
            size += vlen
        size += len(prefix) + len(vpart)
        append(small[size] if size < cached else encode_varint(size))
        append(prefix)
        if key is not None:
            append(key)
        append(vpart)
        if value is not None:
            append(value)
        append(b"\x00")
    return b"".join(parts)


class _Group(NamedTuple):
    """Records ``low..high-1`` of a uniform batch, whose offsetDelta varints share one width.

    Each is a row of ``prefix.shape[1] + vlen + 1`` bytes: its prefix row | value | 00.
    """

    low: int
    high: int
    prefix: npt.NDArray[np.uint8]  # (high - low, columns): length 00 00 offsetDelta 01 vlen


def _uniform_size(count: int, vlen: int) -> int:
    """Bytes of a uniform batch of ``count`` values of ``vlen`` bytes, without building it."""
    tail = len(encode_varint(vlen)) + vlen + 2  # 01 (null key) | valueLength | value | 00
    total = low = 0
    for width, limit in enumerate(_VARINT_WIDTH_LIMITS, start=1):
        high = min(limit, count)
        if high > low:
            body = 2 + width + tail
            total += (high - low) * (len(encode_varint(body)) + body)
            low = high
    return total


def _uniform_plan(count: int, vlen: int) -> tuple[list[_Group], int]:
    """The groups of a uniform batch of ``count`` values of ``vlen`` bytes, and its size."""
    middle = np.frombuffer(NULL_VARINT + encode_varint(vlen), dtype=np.uint8)
    groups: list[_Group] = []
    total = low = 0
    for width, limit in enumerate(_VARINT_WIDTH_LIMITS, start=1):
        high = min(limit, count)
        if high <= low:
            continue
        head = encode_varint(2 + width + len(middle) + vlen + 1) + b"\x00\x00"
        prefix = np.empty((high - low, len(head) + width + len(middle)), dtype=np.uint8)
        prefix[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        offsets = np.arange(low, high, dtype=np.int64)
        prefix[:, len(head) : len(head) + width] = encode_varint_column(offsets, width)
        prefix[:, len(head) + width :] = middle
        groups.append(_Group(low, high, prefix))
        total += (high - low) * (prefix.shape[1] + vlen + 1)
        low = high
    return groups, total


def encode_uniform(values: Sequence[bytes | None]) -> memoryview | None:
    """Lay out key-less, header-less records whose values all have one length, with numpy.

    Every record is ``length | 00 00 | offsetDelta | 01 | valueLength | value | 00``; only
    offsetDelta (and with its width the length) varies, so records with the same offsetDelta
    width form a fixed-width matrix filled column by column. None when values differ in length.
    """
    try:
        lengths = set(map(len, values))  # type: ignore[arg-type]
    except TypeError:  # a None value
        return None
    if len(lengths) != 1:
        return None
    vlen = lengths.pop()
    joined = b"".join(values)  # type: ignore[arg-type]
    matrix = np.frombuffer(joined, dtype=np.uint8).reshape(len(values), vlen)
    groups, total = _uniform_plan(len(values), vlen)
    out = np.empty(total, dtype=np.uint8)
    start = 0
    for low, high, prefix in groups:
        columns = prefix.shape[1]
        rows = out[start : start + (high - low) * (columns + vlen + 1)].reshape(high - low, -1)
        rows[:, :columns] = prefix
        rows[:, columns:-1] = matrix[low:high]
        rows[:, -1] = 0
        start += rows.size
    return memoryview(out.data)


def uniform_values(data: bytes, count: int, last_delta: int) -> list[bytes] | None:
    """Values of a batch laid out as :func:`encode_uniform` lays it out, else None.

    The guess (taken from the first record) is verified byte for byte outside the values with
    numpy, so a batch that passes decodes exactly as the record loop would decode it; anything
    else, damaged or merely different, returns None and takes the loop.
    """
    layout = _uniform_layout(data, count, last_delta)
    if layout is None:
        return None
    vlen, positions = layout
    return [data[p : p + vlen] for p in np.concatenate(positions).tolist()]


def check_records(
    data: bytes | memoryview, *, count: int, last_delta: int, position: int
) -> None:
    """Raise :class:`InvalidBatchError` unless :func:`decode_records` would decode ``data``.

    The produce path's check, building nothing: the C twin of the record loop
    (``_crecords.check``, about 20 µs for 1,000 records) when it was built, else a uniform
    layout verified with numpy. What those refuse takes one pass of the record loop
    (``decode_record_values``), which raises the precise error. The C check accepts exactly
    what the loop accepts (a differential property test holds them together), so the check
    and the decoders can never disagree.
    """
    if NATIVE and _crecords.check(data, count, last_delta):
        return
    data = bytes(data)  # the Python paths slice bytes (no copy when it is bytes already)
    if not NATIVE and _uniform_layout(data, count, last_delta) is not None:
        return
    decode_record_values(data, count=count, last_delta=last_delta, position=position)


def _uniform_layout(
    data: bytes, count: int, last_delta: int
) -> tuple[int, list[npt.NDArray[np.int64]]] | None:
    """``(value length, value positions per group)`` when ``data`` is a uniform batch."""
    if count < UNIFORM_MIN_RECORDS or last_delta != count - 1:
        return None
    try:
        pos = decode_varint(data, 0)[1]  # record 0: length | 00 00 00 01 | valueLength
        if data[pos : pos + 4] != b"\x00\x00\x00\x01":
            return None
        vlen = decode_varint(data, pos + 4)[0]
    except InvalidBatchError:
        return None
    if vlen < 0 or count * (vlen + 7) > len(data):  # a record takes >= 7 bytes + its value
        return None
    if _uniform_size(count, vlen) != len(data):
        return None
    groups, _ = _uniform_plan(count, vlen)
    flat = np.frombuffer(data, dtype=np.uint8)
    positions = []
    start = 0
    for low, high, prefix in groups:
        columns = prefix.shape[1]
        rows = flat[start : start + (high - low) * (columns + vlen + 1)].reshape(high - low, -1)
        if not (np.array_equal(rows[:, :columns], prefix) and not rows[:, -1].any()):
            return None
        positions.append(np.arange(start + columns, start + rows.size, rows.shape[1]))
        start += rows.size
    return vlen, positions


def _bad_record(index: int, reason: str, position: int) -> InvalidBatchError:
    return InvalidBatchError(f"record {index}: {reason}", position)


def uniform_records(values: list[bytes], base_offset: int, timestamp: int) -> list[Record]:
    """Records of a uniform batch (see :func:`uniform_values`), built without a Python loop."""
    end = base_offset + len(values)
    fields = zip(range(base_offset, end), repeat(timestamp), repeat(None), values, repeat(()))
    return cast("list[Record]", list(map(tuple.__new__, repeat(Record), fields)))


def decode_records(
    data: bytes,
    *,
    count: int,
    base_offset: int,
    base_ts: int,
    last_delta: int,
    append_time: int | None,
    position: int,
    wanted: Container[int] | None = None,
) -> list[Record]:
    """Decode ``count`` records from the records section ``data`` (already decompressed).

    ``wanted``: only the records at these offsets are returned (all are checked).

    One long loop on purpose: varints of one or two bytes (nearly all of them) are decoded
    inline, because a helper call per field would cost about a third of the throughput.
    ``position`` (the batch's) only labels errors. The C loop (``_crecords.decode``) returns
    the same list when it was built; where it refuses, this loop runs to raise the error.
    """
    if NATIVE:
        native = _crecords.decode(data, count, base_offset, base_ts, last_delta, append_time,
                                  Record, Header, wanted)
        if native is not None:
            return cast("list[Record]", native)
    if wanted is not None:
        every = decode_records(data, count=count, base_offset=base_offset, base_ts=base_ts,
                               last_delta=last_delta, append_time=append_time,
                               position=position)
        return [r for r in every if r.offset in wanted]
    records: list[Record] = []
    append = records.append
    new, record_type, varint, varlong = tuple.__new__, Record, decode_varint, decode_varlong
    pos = index = 0
    size = len(data)
    try:
        for index in range(count):
            byte = data[pos]
            if byte < 0x80:
                length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                length, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                length, pos = varint(data, pos)
            end = pos + length
            if end > size or length < MIN_RECORD_BODY:
                raise _bad_length(index, length, size - pos, position)
            byte = data[pos + 1]  # pos: attributes, unused
            if byte < 0x80:
                ts_delta, pos = (byte >> 1) ^ -(byte & 1), pos + 2
            else:
                ts_delta, pos = varlong(data, pos + 1)
            byte = data[pos]
            if byte < 0x80:
                delta, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                delta, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                delta, pos = varint(data, pos)
            if data[pos] == 1:  # the usual null key
                key, pos = None, pos + 1
            else:
                klen, pos = varint(data, pos)
                if klen < 0:
                    raise _bad_record(index, f"key length {klen} is below -1", position)
                key, pos = data[pos : pos + klen], pos + klen
            byte = data[pos]
            if byte < 0x80:
                vlen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                vlen, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                vlen, pos = varint(data, pos)
            if vlen >= 0:
                value, pos = data[pos : pos + vlen], pos + vlen
            elif vlen == -1:
                value = None
            else:
                raise _bad_record(index, f"value length {vlen} is below -1", position)
            if data[pos] == 0:
                headers: tuple[Header, ...] = ()
                pos += 1
            else:
                headers, pos = _decode_headers(data, pos, end, index, position)
            if pos != end or not 0 <= delta <= last_delta:
                raise _record_mismatch(
                    data, index, pos, end, delta, last_delta=last_delta, position=position
                )
            append(new(record_type, (base_offset + delta, base_ts + ts_delta, key, value, headers)))
    except IndexError:
        raise _truncated(data, index, count, position) from None
    _check_records_end(pos, size, count, position)
    if append_time is not None:  # LogAppendTime: every record carries the broker's time
        return [new(record_type, (r[0], append_time, r[2], r[3], r[4])) for r in records]
    return records


def decode_record_values(
    data: bytes, *, count: int, last_delta: int, position: int
) -> list[bytes | None]:
    """:func:`decode_records` keeping only values; every check is the same."""
    values: list[bytes | None] = []
    append = values.append
    varint, varlong = decode_varint, decode_varlong
    pos = index = 0
    size = len(data)
    try:
        for index in range(count):
            byte = data[pos]
            if byte < 0x80:
                length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                length, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                length, pos = varint(data, pos)
            end = pos + length
            if end > size or length < MIN_RECORD_BODY:
                raise _bad_length(index, length, size - pos, position)
            pos = varlong(data, pos + 1)[1] if data[pos + 1] >= 0x80 else pos + 2
            byte = data[pos]
            if byte < 0x80:
                delta, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                delta, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                delta, pos = varint(data, pos)
            if data[pos] == 1:
                pos += 1
            else:
                klen, pos = varint(data, pos)
                if klen < 0:
                    raise _bad_record(index, f"key length {klen} is below -1", position)
                pos += klen
            byte = data[pos]
            if byte < 0x80:
                vlen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                vlen, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                vlen, pos = varint(data, pos)
            if vlen >= 0:
                append(data[pos : pos + vlen])
                pos += vlen
            elif vlen == -1:
                append(None)
            else:
                raise _bad_record(index, f"value length {vlen} is below -1", position)
            if data[pos] == 0:
                pos += 1
            else:
                pos = _decode_headers(data, pos, end, index, position)[1]
            if pos != end or not 0 <= delta <= last_delta:
                raise _record_mismatch(
                    data, index, pos, end, delta, last_delta=last_delta, position=position
                )
    except IndexError:
        raise _truncated(data, index, count, position) from None
    _check_records_end(pos, size, count, position)
    return values


def _decode_headers(
    data: bytes, pos: int, end: int, index: int, position: int
) -> tuple[tuple[Header, ...], int]:
    """Headers of record ``index`` starting at its header count; lengths checked vs ``end``."""
    count, pos = decode_varint(data, pos)
    if not 0 <= count <= (end - pos) // 2:  # a header takes at least two bytes
        raise _bad_record(
            index, f"header count {count} does not fit in the record's {end - pos} bytes", position
        )
    headers = []
    for number in range(count):
        klen, pos = decode_varint(data, pos)
        if not 0 <= klen <= end - pos:
            raise _bad_record(index, f"header {number} key length {klen} is invalid", position)
        try:
            key = data[pos : pos + klen].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_record(index, f"header {number} key is not UTF-8", position) from None
        vlen, pos = decode_varint(data, pos + klen)
        if vlen == -1:
            value = None
        elif 0 <= vlen <= end - pos:
            value, pos = data[pos : pos + vlen], pos + vlen
        else:
            raise _bad_record(index, f"header {number} value length {vlen} is invalid", position)
        headers.append(Header(key, value))
    return tuple(headers), pos


def _bad_length(index: int, length: int, remaining: int, position: int) -> InvalidBatchError:
    return _bad_record(
        index,
        f"length {length} is outside {MIN_RECORD_BODY}..{remaining} (the bytes that remain)",
        position,
    )


def _record_mismatch(
    data: bytes, index: int, pos: int, end: int, delta: int, *, last_delta: int, position: int
) -> InvalidBatchError:
    if pos != end:
        return _overrun(data, index, position) or _bad_record(
            index, f"fields end {pos - end:+d} bytes from where its length says", position
        )
    return _bad_record(index, f"offsetDelta {delta} is outside 0..{last_delta}", position)


def _truncated(data: bytes, index: int, count: int, position: int) -> InvalidBatchError:
    if _record_start(data, index) == len(data):
        return _bad_record(
            index,
            f"truncated: the records section holds {index} records but recordsCount is {count}",
            position,
        )
    return _overrun(data, index, position) or _bad_record(
        index, f"truncated: the records section ends inside it (recordsCount {count})", position
    )


def _record_start(data: bytes, index: int) -> int:
    """Where record ``index`` starts; the records before it decoded, so their lengths hold."""
    pos = 0
    for _ in range(index):
        length, pos = decode_varint(data, pos)
        pos += length
    return pos


def _overrun(data: bytes, index: int, position: int) -> InvalidBatchError | None:
    """Name the key or value length of record ``index`` that runs past the record's end.

    Called only once the decode loops have failed, so that they need no check of their own:
    they slice first and notice the overrun later, as a short buffer or a record whose
    fields end elsewhere than its length says. None when neither length overruns.
    """
    try:
        length, pos = decode_varint(data, _record_start(data, index))
        end = pos + length
        pos = decode_varlong(data, pos + 1)[1]  # attributes, timestampDelta
        pos = decode_varint(data, pos)[1]  # offsetDelta
        for field in ("key", "value"):
            size, pos = decode_varint(data, pos)
            if size > end - pos:
                return _bad_record(
                    index,
                    f"{field} length {size} runs past the end of the record "
                    f"({max(end - pos, 0)} bytes remain)",
                    position,
                )
            pos += max(size, 0)
    except InvalidBatchError:
        return None
    return None


def _check_records_end(pos: int, size: int, count: int, position: int) -> None:
    if pos != size:
        raise InvalidBatchError(
            f"{size - pos} bytes follow the last of the {count} records the batch declares",
            position,
        )
