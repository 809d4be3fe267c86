"""Reading events out of a store partition: by offsets (streams) and by ranges (all, category).

Everything here reads through :meth:`PartitionLog.read`, so it sees only records below the high
watermark (durable ones) and every batch it decodes has passed its CRC check. No locks: the
partition log's reads are lock-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.log.partition_log import PartitionLog
from engine.records.batch import parse_header
from engine.records.record import Record
from engine.views.eventstore.codec import ScanEntry, decode_event, decode_records, scan_batches
from engine.views.eventstore.types import RecordedEvent

__all__ = ["read_at_offsets", "read_range", "scan_range"]

KeyFilter = Callable[[bytes], bool]


def _max_batch_bytes(partition_log: PartitionLog) -> int:
    return partition_log.config.max_message_bytes + 12


def read_at_offsets(
    partition_log: PartitionLog, offsets: Sequence[int], partition: int, read_bytes: int
) -> list[RecordedEvent]:
    """The events stored at ``offsets`` (ascending, all below the high watermark), in order.

    Reads ``read_bytes`` at a time from the first offset still wanted and decodes only the
    batches that hold a wanted offset, so dense streams cost one read per many events and
    sparse ones one read per event.
    """
    wanted = list(offsets)
    found: list[RecordedEvent] = []
    limit = _max_batch_bytes(partition_log)
    index = 0
    while index < len(wanted):
        data = partition_log.read(wanted[index], read_bytes).data
        if not data:
            break
        position = 0
        while position < len(data) and index < len(wanted):
            header = parse_header(data, position, limit)
            if header.last_offset >= wanted[index]:
                _, records = decode_records(data, position, limit)
                index = _take(records, wanted, index, partition, found)
            position += header.size
    return found


def _take(records: list[Record], wanted: list[int], index: int, partition: int,
          found: list[RecordedEvent]) -> int:
    """Collect the wanted records of one batch; returns the index of the next wanted offset."""
    by_offset = {record.offset: record for record in records}
    last = records[-1].offset if records else -1
    while index < len(wanted) and wanted[index] <= last:
        record = by_offset.get(wanted[index])
        event = decode_event(record, partition) if record is not None else None
        if event is not None:
            found.append(event)
        index += 1
    return index


def read_range(
    partition_log: PartitionLog,
    from_offset: int,
    max_count: int,
    partition: int,
    read_bytes: int,
    key_filter: KeyFilter | None = None,
) -> tuple[list[RecordedEvent], int]:
    """Up to ``max_count`` events from ``from_offset`` on, and the offset to continue from.

    The continuation offset is past every record examined, matching or not, so a caller that
    resumes from it never sees an event twice nor skips one.
    """
    offset = max(from_offset, partition_log.log_start_offset)
    events: list[RecordedEvent] = []
    limit = _max_batch_bytes(partition_log)
    while len(events) < max_count and offset < partition_log.high_watermark:
        data = partition_log.read(offset, read_bytes).data
        if not data:
            break
        position = 0
        while position < len(data) and len(events) < max_count:
            size, records = decode_records(data, position, limit)
            batch_end = parse_header(data, position, limit).next_offset
            for record in records:
                if record.offset < offset:
                    continue
                offset = record.offset + 1
                if record.key is None or (key_filter is not None and not key_filter(record.key)):
                    continue
                event = decode_event(record, partition)
                if event is not None:
                    events.append(event)
                    if len(events) >= max_count:
                        break
            if len(events) < max_count:
                offset = max(offset, batch_end)
            position += size
    return events, offset


def scan_range(
    partition_log: PartitionLog,
    from_offset: int,
    to_offset: int,
    read_bytes: int,
    sink: Callable[[list[ScanEntry]], None],
) -> int:
    """Feed ``sink`` the index entries of the records in ``[from_offset, to_offset)``, one read
    at a time (keys and headers only); returns the offset the scan reached."""
    offset = max(from_offset, partition_log.log_start_offset)
    limit = _max_batch_bytes(partition_log)
    end = min(to_offset, partition_log.high_watermark)
    while offset < end:
        data = partition_log.read(offset, read_bytes).data
        if not data:
            break
        scanned = scan_batches(data, offset, limit)
        sink([e for e in scanned if e.offset < end] if scanned and scanned[-1].offset >= end
             else scanned)
        position = 0
        while position < len(data):
            header = parse_header(data, position, limit)
            offset = max(offset, header.next_offset)
            position += header.size
    return min(offset, end)
