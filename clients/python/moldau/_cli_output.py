"""Formatting for the CLI: tables for people, JSON for scripts, times and bytes both ways.

Bytes in JSON: keys, values and header values are UTF-8 strings when they decode as UTF-8; a
record with any field that does not is printed with ``"encoding": "base64"`` and all its byte
fields base64-encoded, so the output is always valid JSON and nothing is lost.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from moldau._types import ConsumerRecord, Header

__all__ = [
    "decode_json_record",
    "format_duration_ms",
    "format_table",
    "format_time",
    "parse_duration_ms",
    "parse_local_time_ms",
    "parse_time_ms",
    "record_json",
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, numbers right-aligned.

    None prints as ``-`` (an absent value, such as a group's offset where it never
    committed) and keeps a column of numbers right-aligned.
    """
    cells = [[str(c) for c in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        any(isinstance(row[i], int) for row in rows)
        and all(isinstance(row[i], int) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def parse_time_ms(text: str) -> int:
    """ISO 8601 (``2026-11-28T14:00:00Z``; no offset means UTC) or ms since the epoch.

    Raises:
        ValueError: neither form.
    """
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-28T14:00:00Z) or epoch ms"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_local_time_ms(text: str) -> int:
    """ISO 8601 (``2026-11-28T14:00:00``, ``...Z``, ``...+01:00``) or ms since the epoch.

    Unlike :func:`parse_time_ms`, a time without an offset is *local* time, as in Kafka's
    ``--to-datetime``: an operator resetting "to 9 this morning" means their own clock.

    Raises:
        ValueError: neither form.
    """
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-28T14:00:00, local time, or "
            "2026-11-28T14:00:00Z) or epoch ms"
        ) from None
    return round(moment.timestamp() * 1000)  # a naive datetime's timestamp() is local time


_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?",
    re.IGNORECASE,
)
_MS_PER = {"weeks": 604_800_000, "days": 86_400_000, "hours": 3_600_000, "minutes": 60_000}


def parse_duration_ms(text: str) -> int:
    """An ISO 8601 duration ``PnWnDTnHnMn.nS`` (as Java's ``Duration.parse``) in whole ms.

    Years and months are refused (they have no fixed length), and so are negative durations:
    a reset "by -1 hour" would point into the future.

    Raises:
        ValueError: not such a duration, or a negative one.
    """
    stripped = text.strip()
    if "-" in stripped:
        raise ValueError(f"a duration must not be negative, got {text!r}")
    match = _DURATION.fullmatch(stripped)
    if match is None or not any(match.groupdict().values()):
        hint = ""
        if re.match(r"P[^T]*[YM]", stripped, re.IGNORECASE):  # M before T means months
            hint = "; years and months have no fixed length, use days (P30D)"
        raise ValueError(
            f"{text!r} is not an ISO 8601 duration like P1DT2H30M, PT15M or PT0.5S{hint}"
        )
    total = Decimal(0)
    for name, value in match.groupdict().items():
        if value is not None:
            amount = Decimal(value.replace(",", "."))
            total += amount * (1000 if name == "seconds" else _MS_PER[name])
    return int(total)


def format_duration_ms(duration_ms: int | None) -> str:
    """A lag or age for people: ``850ms``, ``42s``, ``3m 20s``, ``2h 05m``, ``3d 04h``."""
    if duration_ms is None:
        return "-"
    if duration_ms == 0:
        return "0s"
    if duration_ms < 1000:
        return f"{duration_ms}ms"
    seconds = duration_ms // 1000
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def format_time(timestamp_ms: int) -> str:
    if timestamp_ms < 0:
        return "-"
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(data: bytes | None, binary: bool) -> str | None:
    if data is None:
        return None
    return base64.b64encode(data).decode("ascii") if binary else data.decode("utf-8")


def _is_utf8(data: bytes | None) -> bool:
    if data is None:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def record_json(record: ConsumerRecord) -> str:
    """One consumed record as a JSON object on one line."""
    binary = not (
        _is_utf8(record.key)
        and _is_utf8(record.value)
        and all(_is_utf8(h.value) for h in record.headers)
    )
    obj: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": _text(record.key, binary),
        "value": _text(record.value, binary),
        "headers": {h.key: _text(h.value, binary) for h in record.headers},
    }
    if binary:
        obj["encoding"] = "base64"
    return json.dumps(obj, ensure_ascii=False)


def _bytes_field(obj: Mapping[str, Any], name: str, binary: bool) -> bytes | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'"{name}" must be a string or null')
    return base64.b64decode(value) if binary else value.encode("utf-8")


def decode_json_record(
    line: str,
) -> tuple[bytes | None, bytes | None, tuple[Header, ...], int | None, int | None]:
    """``(key, value, headers, partition, timestamp)`` from a JSON input line.

    Accepts the objects ``consume --output json`` prints (so its output can be replayed),
    with ``headers`` as an object or a list of ``[key, value]`` pairs.

    Raises:
        ValueError: not a JSON object, or a field of the wrong type.
    """
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    binary = obj.get("encoding") == "base64"
    raw_headers = obj.get("headers") or {}
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = []
    for pair in pairs:
        key, value = pair
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise ValueError('"headers" maps strings to strings or null')
        headers.append(Header(key, _bytes_field({"v": value}, "v", binary)))
    partition = obj.get("partition")
    timestamp = obj.get("timestamp")
    for name, number in (("partition", partition), ("timestamp", timestamp)):
        if number is not None and not isinstance(number, int):
            raise ValueError(f'"{name}" must be an integer')
    return (
        _bytes_field(obj, "key", binary),
        _bytes_field(obj, "value", binary),
        tuple(headers),
        partition,
        timestamp,
    )


def print_json(value: object, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
