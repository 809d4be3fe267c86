"""T9, the bad-input matrix: one bad request per case, each against the same live server.

Every case sends one request that must be refused, over gRPC, to a server of its own (module
scope, the shared integration limits). For each case the test checks:

- the exact status code, a fragment of the message that says what to fix, and the error class
  in the ``moldau-error`` trailing metadata (so two refusals with one code stay distinct);
- that nothing was stored: every partition of every topic has the same log end offset, high
  watermark and size in bytes as before, and no topic appeared or vanished;
- that the next valid request succeeds, at exactly the offset the log ended at.

The RecordBatch cases follow Kafka's validations (``LogValidator`` and ``DefaultRecordBatch``):
CRC, magic, batchLength, recordsCount against lastOffsetDelta and against the records present,
codec bits, control and transactional flags, an idempotent producer id without a sequence,
and everything inside the records (varints, record, key, value and header lengths, offset
deltas, bytes after the last record), compressed or not.

Not covered: timestamps outside an accepted window. Moldau has no such window (no
``message.timestamp.difference.max.ms`` or ``before/after.max.ms`` topic config, and no server
setting), so every CreateTime timestamp is accepted; there is nothing to be 1 ms outside of.
"""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from engine.records.batch import DEFAULT_MAX_DECOMPRESSED_BYTES, encode_batch
from engine.records.compression import Codec, compress
from engine.records.crc import crc32c
from engine.records.record import Header, NewRecord
from engine.records.varint import encode_varint, encode_varlong
from grpc_api.errors import ERROR_METADATA_KEY
from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, common_pb2, fetch_pb2, produce_pb2
from tests.integration.support import LIMITS, Stubs, make_stubs

S = grpc.StatusCode
TS = 1_700_000_000_000
MAX_BATCH_BYTES = int(LIMITS["MOLDAU_MAX_BATCH_BYTES"])
SMALL_TOPIC_BYTES = 2048

MAIN = "matrix-main"  # one partition: where RecordBatch cases are sent
MULTI = "matrix.multi"  # three partitions; "matrix_multi" would collide with it
SMALL = "matrix-small"  # max.message.bytes = 2048
LATEST = common_pb2.OffsetSpec.LATEST
TOPICS = {MAIN: (1, {}), MULTI: (3, {}), SMALL: (1, {"max.message.bytes": str(SMALL_TOPIC_BYTES)})}


# ---------------------------------------------------------------------------- byte builders


def varint(value: int) -> bytes:
    return encode_varint(value)


def record(
    *,
    value: bytes | None = b"v",
    key: bytes | None = None,
    offset_delta: int = 0,
    headers: bytes = b"\x00",
    length: int | None = None,
    raw: bytes | None = None,
) -> bytes:
    """One record of a records section; ``raw`` replaces every field after the length."""
    if raw is None:
        raw = b"\x00" + encode_varlong(0) + varint(offset_delta)
        raw += b"\x01" if key is None else varint(len(key)) + key
        raw += b"\x01" if value is None else varint(len(value)) + value
        raw += headers
    return varint(len(raw) if length is None else length) + raw


def batch(
    records: bytes = b"",
    *,
    count: int = 1,
    last_offset_delta: int | None = None,
    attributes: int = 0,
    magic: int = 2,
    producer: tuple[int, int, int] = (-1, -1, -1),
    batch_length: int | None = None,
    crc: int | None = None,
) -> bytes:
    """A RecordBatch v2 around ``records`` (taken as they are, compressed or not).

    Every field is as given; the CRC is the correct one unless ``crc`` is set, so a case
    reaches the check it is about instead of stopping at the CRC.
    """
    delta = count - 1 if last_offset_delta is None else last_offset_delta
    covered = struct.pack(">hiqqqhii", attributes, delta, TS, TS, *producer, count) + records
    length = 49 + len(records) if batch_length is None else batch_length
    checksum = crc32c(covered) if crc is None else crc
    return struct.pack(">qiibI", 0, length, -1, magic, checksum) + covered


def flip(buf: bytes, index: int) -> bytes:
    out = bytearray(buf)
    out[index] ^= 0x01
    return bytes(out)


def with_field(buf: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``buf`` with one header field replaced; the CRC is left as it was."""
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


VALID = encode_batch([NewRecord(b"value", key=b"key")], timestamp=TS)
TWO = record(value=b"a") + record(value=b"b", offset_delta=1)
GARBAGE = bytes(range(7, 250, 3)) * 2
GARBAGE_RECORDS = record(length=40, raw=b"\x00\x00\x00\x01\x08abc")  # claims 40, has 8


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Ctx:
    stubs: Stubs
    channel: grpc.Channel


Send = Callable[[Ctx], object]


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    code: grpc.StatusCode
    fragment: str
    reason: str  # the error class named in the moldau-error trailing metadata


@dataclass(frozen=True)
class ProduceBatch:
    """Send one pre-encoded batch with Produce; ``build`` makes the bytes when first sent."""

    build: Callable[[], bytes]
    topic: str = MAIN
    partition: int = 0

    @property
    def data(self) -> bytes:
        return _built(self.build)

    def __call__(self, ctx: Ctx) -> object:
        request = produce_pb2.ProduceRequest(
            topic=self.topic, partition=self.partition, record_batch=self.data
        )
        return ctx.stubs.produce.Produce(request)


@functools.cache
def _built(build: Callable[[], bytes]) -> bytes:
    return build()


def produce_batch(data: bytes, topic: str = MAIN, partition: int = 0) -> ProduceBatch:
    return ProduceBatch(lambda: data, topic, partition)


def gzip_bomb() -> bytes:
    """About 65 KB of gzip that inflates 1 MiB past the decompression cap (64 MiB)."""
    zeros = bytes(DEFAULT_MAX_DECOMPRESSED_BYTES + (1 << 20))
    return batch(gzip.compress(zeros), attributes=Codec.GZIP)


def produce_records(
    records: list[common_pb2.Record],
    topic: str = MAIN,
    partition: int | None = None,
    compression: int = 0,
) -> Send:
    def send(ctx: Ctx) -> object:
        request = produce_pb2.ProduceRequest(
            topic=topic,
            records=produce_pb2.RecordList(records=records, compression=compression),
        )
        if partition is not None:
            request.partition = partition
        return ctx.stubs.produce.Produce(request)

    return send


def produce_request(**fields: object) -> Send:
    return lambda ctx: ctx.stubs.produce.Produce(produce_pb2.ProduceRequest(**fields))


def create_topic(name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> Send:
    request = admin_pb2.CreateTopicRequest(name=name, partitions=partitions, configs=configs)
    return lambda ctx: ctx.stubs.admin.CreateTopic(request)


def raw_call(method: str, body: bytes) -> Send:
    """Send ``body`` as the serialized request, so it can hold what protobuf cannot encode."""

    def send(ctx: Ctx) -> object:
        call = ctx.channel.unary_unary(method, request_serializer=None)
        return call(body)

    return send


def _proto_string(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field (plain base-128 length, not zig-zag)."""
    length = len(value)
    prefix = bytearray()
    while length >= 0x80:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes([number << 3 | 2]) + bytes(prefix) + value


BAD_UTF8 = b"bad-\xff\xfe-name"
TOPIC_CHARS = "ASCII letters, digits, '.', '_' and '-'"
REC0 = "record 0: "

BATCH_CASES = [
    # --- CRC
    Case("crc-value-byte-flipped", produce_batch(flip(VALID, len(VALID) - 3)), S.INVALID_ARGUMENT,
         "stored CRC-32C", "CorruptBatchError"),
    Case("crc-field-zero", produce_batch(batch(record(), crc=0)), S.INVALID_ARGUMENT,
         "stored CRC-32C 0x00000000", "CorruptBatchError"),
    Case("crc-attributes-flipped", produce_batch(flip(VALID, 22)), S.INVALID_ARGUMENT,
         "re-encode it and resend", "CorruptBatchError"),
    # --- magic
    Case("magic-0", produce_batch(batch(record(), magic=0)), S.INVALID_ARGUMENT,
         "magic byte is 0, only RecordBatch v2 (magic 2)", "UnsupportedMagicError"),
    Case("magic-1", produce_batch(batch(record(), magic=1)), S.INVALID_ARGUMENT,
         "magic byte is 1", "UnsupportedMagicError"),
    Case("magic-3", produce_batch(batch(record(), magic=3)), S.INVALID_ARGUMENT,
         "magic byte is 3", "UnsupportedMagicError"),
    Case("magic-0-in-a-short-message", produce_batch(bytes(17) + b"\x07"), S.INVALID_ARGUMENT,
         "magic byte is 0", "UnsupportedMagicError"),
    # --- batchLength against the buffer
    Case("batch-length-zero", produce_batch(batch(record(), batch_length=0)),
         S.INVALID_ARGUMENT, "batchLength 0 is below the minimum of 49", "InvalidBatchError"),
    Case("batch-length-negative", produce_batch(batch(record(), batch_length=-1)),
         S.INVALID_ARGUMENT, "batchLength -1 is below the minimum of 49", "InvalidBatchError"),
    Case("batch-length-past-the-buffer", produce_batch(with_field(VALID, 8, ">i", len(VALID) - 11)),
         S.INVALID_ARGUMENT, f"batch of {len(VALID) + 1} bytes is truncated", "InvalidBatchError"),
    Case("batch-length-huge", produce_batch(with_field(VALID, 8, ">i", 2**31 - 1)),
         S.RESOURCE_EXHAUSTED, "over the limit of", "BatchTooLargeError"),
    Case("batch-length-one-short", produce_batch(with_field(VALID, 8, ">i", len(VALID) - 13)),
         S.INVALID_ARGUMENT, "a produce request carries exactly one batch", "InvalidBatchError"),
    Case("trailing-bytes-after-the-batch", produce_batch(VALID + b"\x00\x00"), S.INVALID_ARGUMENT,
         f"the batch is {len(VALID)} bytes, the request {len(VALID) + 2}", "InvalidBatchError"),
    Case("two-batches-in-one-request", produce_batch(VALID + VALID), S.INVALID_ARGUMENT,
         "exactly one batch", "InvalidBatchError"),
    Case("empty-record-batch-bytes", produce_batch(b""), S.INVALID_ARGUMENT,
         "a batch header needs 61 bytes, only 0 remain", "InvalidBatchError"),
    Case("header-cut-at-40-bytes", produce_batch(VALID[:40]), S.INVALID_ARGUMENT,
         "needs 61 bytes, only 40 remain", "InvalidBatchError"),
    Case("batch-cut-3-bytes-short", produce_batch(VALID[:-3]), S.INVALID_ARGUMENT,
         "is truncated: only", "InvalidBatchError"),
    # --- recordsCount and lastOffsetDelta
    Case("empty-batch-no-records", produce_batch(batch(b"", count=0, last_offset_delta=0)),
         S.INVALID_ARGUMENT, "needs at least one record", "InvalidBatchError"),
    Case("records-count-negative", produce_batch(batch(record(), count=-1, last_offset_delta=0)),
         S.INVALID_ARGUMENT, "recordsCount -1 is negative", "InvalidBatchError"),
    Case("last-offset-delta-negative", produce_batch(batch(record(), last_offset_delta=-1)),
         S.INVALID_ARGUMENT, "lastOffsetDelta -1 is negative", "InvalidBatchError"),
    Case("records-count-exceeds-offset-range",
         produce_batch(batch(TWO, count=3, last_offset_delta=1)), S.INVALID_ARGUMENT,
         "recordsCount 3 exceeds lastOffsetDelta + 1 = 2", "InvalidBatchError"),
    Case("last-offset-delta-leaves-a-gap",
         produce_batch(batch(record(), count=1, last_offset_delta=4)), S.INVALID_ARGUMENT,
         "lastOffsetDelta 4 does not match recordsCount 1", "InvalidBatchError"),
    Case("records-count-above-the-records-present", produce_batch(batch(TWO, count=3)),
         S.INVALID_ARGUMENT, "the records section holds 2 records but recordsCount is 3",
         "InvalidBatchError"),
    Case("records-count-below-the-records-present", produce_batch(batch(TWO, count=1)),
         S.INVALID_ARGUMENT, "bytes follow the last of the 1 records", "InvalidBatchError"),
    # --- attributes
    *[
        Case(f"codec-bits-{bits}", produce_batch(batch(record(), attributes=bits)),
             S.INVALID_ARGUMENT, f"compression codec {bits} is unknown", "UnsupportedCodecError")
        for bits in (5, 6, 7)
    ],
    Case("control-batch-from-a-producer", produce_batch(batch(record(), attributes=0x20)),
         S.INVALID_ARGUMENT, "producers may not send control batches", "InvalidBatchError"),
    Case("transactional-batch", produce_batch(batch(record(), attributes=0x10)),
         S.INVALID_ARGUMENT, "transactional batches are not supported", "InvalidBatchError"),
    Case("producer-id-without-a-sequence", produce_batch(batch(record(), producer=(7, 0, -1))),
         S.INVALID_ARGUMENT, "baseSequence -1", "InvalidBatchError"),
    Case("producer-sequence-below-minus-one", produce_batch(batch(record(), producer=(7, 0, -5))),
         S.INVALID_ARGUMENT, "baseSequence -5", "InvalidBatchError"),
    # --- compressed payloads
    *[
        Case(f"{codec.name.lower()}-garbage", produce_batch(batch(GARBAGE, attributes=codec)),
             S.INVALID_ARGUMENT, f"{codec.name.lower()} payload does not decompress",
             "InvalidBatchError")
        for codec in (Codec.GZIP, Codec.SNAPPY, Codec.LZ4, Codec.ZSTD)
    ],
    *[
        Case(f"{codec.name.lower()}-stream-of-bad-records",
             produce_batch(batch(compress(codec, GARBAGE_RECORDS), attributes=codec)),
             S.INVALID_ARGUMENT, "record 0: length 40 is outside 6..8", "InvalidBatchError")
        for codec in (Codec.GZIP, Codec.SNAPPY, Codec.LZ4, Codec.ZSTD)
    ],
    Case("gzip-stream-cut-short",
         produce_batch(batch(compress(Codec.GZIP, record())[:-4], attributes=Codec.GZIP)),
         S.INVALID_ARGUMENT, "gzip stream is truncated", "InvalidBatchError"),
    Case("gzip-bomb", ProduceBatch(gzip_bomb),
         S.RESOURCE_EXHAUSTED, "decompressed gzip records", "BatchTooLargeError"),
    # --- inside the records
    Case("record-length-varint-of-6-bytes", produce_batch(batch(b"\x80" * 5 + b"\x00" * 8)),
         S.INVALID_ARGUMENT, "varint is longer than 5 bytes", "InvalidBatchError"),
    Case("record-length-past-the-buffer", produce_batch(batch(record(length=1000))),
         S.INVALID_ARGUMENT, f"{REC0}length 1000 is outside 6..7", "InvalidBatchError"),
    Case("record-length-negative", produce_batch(batch(record(length=-5))),
         S.INVALID_ARGUMENT, f"{REC0}length -5 is outside", "InvalidBatchError"),
    Case("record-length-zero", produce_batch(batch(record(length=0))),
         S.INVALID_ARGUMENT, f"{REC0}length 0 is outside 6..", "InvalidBatchError"),
    Case("key-length-past-the-record",
         produce_batch(batch(record(raw=b"\x00\x00\x00" + varint(500) + b"kk\x01\x00"))),
         S.INVALID_ARGUMENT, f"{REC0}key length 500 runs past the end of the record",
         "InvalidBatchError"),
    Case("key-length-below-minus-one",
         produce_batch(batch(record(raw=b"\x00\x00\x00" + varint(-2) + b"\x01\x00"))),
         S.INVALID_ARGUMENT, f"{REC0}key length -2 is below -1", "InvalidBatchError"),
    Case("value-length-past-the-record",
         produce_batch(batch(record(raw=b"\x00\x00\x00\x01" + varint(300) + b"vv\x00"))),
         S.INVALID_ARGUMENT, f"{REC0}value length 300 runs past the end of the record",
         "InvalidBatchError"),
    Case("value-length-below-minus-one",
         produce_batch(batch(record(raw=b"\x00\x00\x00\x01" + varint(-3) + b"\x00"))),
         S.INVALID_ARGUMENT, f"{REC0}value length -3 is below -1", "InvalidBatchError"),
    Case("header-count-past-the-record", produce_batch(batch(record(headers=varint(100)))),
         S.INVALID_ARGUMENT, f"{REC0}header count 100 does not fit", "InvalidBatchError"),
    Case("header-count-negative", produce_batch(batch(record(headers=varint(-4) + b"\x00"))),
         S.INVALID_ARGUMENT, f"{REC0}header count -4 does not fit", "InvalidBatchError"),
    Case("header-key-length-past-the-record",
         produce_batch(batch(record(headers=varint(1) + varint(90) + b"k\x01"))),
         S.INVALID_ARGUMENT, f"{REC0}header 0 key length 90 is invalid", "InvalidBatchError"),
    Case("header-key-not-utf8",
         produce_batch(batch(record(headers=varint(1) + varint(2) + b"\xff\xfe\x01"))),
         S.INVALID_ARGUMENT, f"{REC0}header 0 key is not UTF-8", "InvalidBatchError"),
    Case("header-value-length-past-the-record",
         produce_batch(batch(record(headers=varint(1) + varint(1) + b"k" + varint(70) + b"x"))),
         S.INVALID_ARGUMENT, f"{REC0}header 0 value length 70 is invalid", "InvalidBatchError"),
    Case("offset-delta-past-last-offset-delta", produce_batch(batch(record(offset_delta=5))),
         S.INVALID_ARGUMENT, f"{REC0}offsetDelta 5 is outside 0..0", "InvalidBatchError"),
    Case("offset-delta-negative", produce_batch(batch(record(offset_delta=-1))),
         S.INVALID_ARGUMENT, f"{REC0}offsetDelta -1 is outside 0..0", "InvalidBatchError"),
    Case("timestamp-delta-varlong-of-11-bytes",
         produce_batch(batch(record(raw=b"\x00" + b"\x80" * 10 + b"\x00\x00\x01\x01\x00"))),
         S.INVALID_ARGUMENT, "varlong is longer than 10 bytes", "InvalidBatchError"),
    Case("bytes-after-the-last-record", produce_batch(batch(record() + b"\x00\x00\x00")),
         S.INVALID_ARGUMENT, "3 bytes follow the last of the 1 records", "InvalidBatchError"),
]

SIZE_CASES = [
    Case("batch-over-topic-max-message-bytes",
         produce_batch(encode_batch([NewRecord(b"v" * 3000)], timestamp=TS), SMALL),
         S.RESOURCE_EXHAUSTED, "over the limit of 2048 bytes; split the records",
         "BatchTooLargeError"),
    Case("oversized-key-pre-encoded",
         produce_batch(encode_batch([NewRecord(b"v", key=b"k" * 3000)], timestamp=TS), SMALL),
         S.RESOURCE_EXHAUSTED, "raise the topic's max.message.bytes", "BatchTooLargeError"),
    Case("oversized-headers-pre-encoded",
         produce_batch(
             encode_batch(
                 [NewRecord(b"v", headers=tuple(Header(f"h{i}", b"x" * 100) for i in range(30)))],
                 timestamp=TS,
             ),
             SMALL,
         ),
         S.RESOURCE_EXHAUSTED, "max.message.bytes", "BatchTooLargeError"),
    Case("record-batch-over-server-max-batch-bytes",
         produce_batch(encode_batch([NewRecord(b"b" * MAX_BATCH_BYTES)], timestamp=TS)),
         S.RESOURCE_EXHAUSTED, f"over the server's max_batch_bytes of {MAX_BATCH_BYTES}",
         "LimitExceededError"),
    Case("oversized-value-plain-records",
         produce_records([common_pb2.Record(value=b"v" * (MAX_BATCH_BYTES + 1))], partition=0),
         S.RESOURCE_EXHAUSTED, f"over the server's max_batch_bytes of {MAX_BATCH_BYTES}",
         "LimitExceededError"),
    Case("oversized-key-plain-records",
         produce_records([common_pb2.Record(key=b"k" * 4000, value=b"v")], SMALL, partition=0),
         S.RESOURCE_EXHAUSTED, "over the limit of 2048 bytes", "BatchTooLargeError"),
    Case("oversized-headers-plain-records",
         produce_records(
             [common_pb2.Record(
                 value=b"v",
                 headers=[common_pb2.Header(key=f"h{i}", value=b"x" * 1000) for i in range(600)],
             )],
             partition=0,
         ),
         S.RESOURCE_EXHAUSTED, "max_batch_bytes", "LimitExceededError"),
]

REQUEST_CASES = [
    Case("produce-without-topic", produce_request(partition=0, record_batch=VALID),
         S.INVALID_ARGUMENT, "topic is required", "InvalidRequestError"),
    Case("record-batch-without-partition", produce_request(topic=MAIN, record_batch=VALID),
         S.INVALID_ARGUMENT, "partition is required with record_batch", "InvalidRequestError"),
    Case("produce-without-payload", produce_request(topic=MAIN, partition=0),
         S.INVALID_ARGUMENT, "set either record_batch or records", "InvalidRequestError"),
    Case("plain-records-empty", produce_records([], partition=0), S.INVALID_ARGUMENT,
         "send at least one record", "InvalidRequestError"),
    Case("plain-records-unknown-compression",
         produce_records([common_pb2.Record(value=b"v")], compression=9), S.INVALID_ARGUMENT,
         "compression 9 is unknown (0 none, 1 gzip", "InvalidRequestError"),
    Case("produce-body-not-protobuf",
         raw_call("/moldau.v1.ProduceService/Produce", b"\xff\xff\xff\xff"),
         S.INVALID_ARGUMENT, "is not a valid ProduceRequest message", "InvalidRequestError"),
]

PARTITION_CASES = [
    Case("pre-encoded-partition-1-of-1", produce_batch(VALID, partition=1), S.NOT_FOUND,
         "has partitions 0..0; partition 1 does not exist", "UnknownPartitionError"),
    Case("pre-encoded-partition-negative", produce_batch(VALID, partition=-1), S.NOT_FOUND,
         "partition -1 does not exist", "UnknownPartitionError"),
    Case("pre-encoded-partition-int32-max", produce_batch(VALID, partition=2**31 - 1),
         S.NOT_FOUND, f"partition {2**31 - 1} does not exist", "UnknownPartitionError"),
    Case("plain-records-partition-3-of-3",
         produce_records([common_pb2.Record(value=b"v")], MULTI, partition=3), S.NOT_FOUND,
         "has partitions 0..2; partition 3 does not exist", "UnknownPartitionError"),
    Case("plain-records-partition-negative",
         produce_records([common_pb2.Record(value=b"v")], MULTI, partition=-2), S.NOT_FOUND,
         "partition -2 does not exist", "UnknownPartitionError"),
    Case("list-offsets-partition-out-of-range",
         lambda ctx: ctx.stubs.admin.ListOffsets(
             admin_pb2.ListOffsetsRequest(
                 topic=MULTI, partitions=[0, 5], spec=common_pb2.OffsetSpec(kind=LATEST)
             )
         ),
         S.NOT_FOUND, "partition 5 does not exist", "UnknownPartitionError"),
    Case("fetch-partition-negative",
         lambda ctx: ctx.stubs.fetch.Fetch(fetch_pb2.FetchRequest(topic=MAIN, partition=-1)),
         S.NOT_FOUND, "partition -1 does not exist", "UnknownPartitionError"),
]

NAME_CASES = [
    Case("create-topic-empty-name", create_topic(""), S.INVALID_ARGUMENT,
         "a topic name cannot be empty", "InvalidTopicError"),
    Case("create-topic-dot", create_topic("."), S.INVALID_ARGUMENT,
         "'.' cannot name a topic (it means a directory)", "InvalidTopicError"),
    Case("create-topic-dot-dot", create_topic(".."), S.INVALID_ARGUMENT,
         "'..' cannot name a topic", "InvalidTopicError"),
    Case("create-topic-250-chars", create_topic("t" * 250), S.INVALID_ARGUMENT,
         "topic name is 250 characters long; the maximum is 249", "InvalidTopicError"),
    Case("create-topic-300-chars", create_topic("t" * 300), S.INVALID_ARGUMENT,
         "300 characters long", "InvalidTopicError"),
    Case("create-topic-nul", create_topic("bad\x00name"), S.INVALID_ARGUMENT,
         f"contains '\\x00'; use only {TOPIC_CHARS}", "InvalidTopicError"),
    Case("create-topic-slash", create_topic("a/b"), S.INVALID_ARGUMENT, "contains '/'",
         "InvalidTopicError"),
    Case("create-topic-space", create_topic("a b"), S.INVALID_ARGUMENT, "contains ' '",
         "InvalidTopicError"),
    Case("create-topic-non-ascii", create_topic("t\u00f3pico"), S.INVALID_ARGUMENT,
         "contains '\u00f3'", "InvalidTopicError"),
    Case("create-topic-invalid-utf8",
         raw_call("/moldau.v1.AdminService/CreateTopic", _proto_string(1, BAD_UTF8) + b"\x10\x01"),
         S.INVALID_ARGUMENT, "is not a valid CreateTopicRequest message", "InvalidRequestError"),
    Case("produce-topic-invalid-utf8",
         raw_call("/moldau.v1.ProduceService/Produce",
                  _proto_string(1, BAD_UTF8) + b"\x10\x00" + _proto_string(3, VALID)),
         S.INVALID_ARGUMENT, "is not a valid ProduceRequest message", "InvalidRequestError"),
    Case("create-topic-internal-prefix", create_topic("__mine"), S.INVALID_ARGUMENT,
         "reserved for the broker's internal topics", "InvalidTopicError"),
    Case("create-topic-colliding-dot-underscore", create_topic("matrix_multi"),
         S.INVALID_ARGUMENT, "collides with an existing topic", "InvalidTopicError"),
    Case("create-topic-existing", create_topic(MAIN), S.ALREADY_EXISTS,
         f"topic {MAIN!r} already exists", "TopicExistsError"),
    Case("produce-unknown-topic", produce_batch(VALID, topic="matrix-nope"), S.NOT_FOUND,
         "topic 'matrix-nope' does not exist", "UnknownTopicError"),
    Case("produce-topic-dot-dot", produce_batch(VALID, topic=".."), S.NOT_FOUND,
         "topic '..' does not exist", "UnknownTopicError"),
    Case("produce-topic-250-chars", produce_batch(VALID, topic="t" * 250), S.NOT_FOUND,
         "does not exist", "UnknownTopicError"),
    Case("describe-topic-empty-name",
         lambda ctx: ctx.stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="")),
         S.NOT_FOUND, "topic '' does not exist", "UnknownTopicError"),
    Case("delete-topic-dot",
         lambda ctx: ctx.stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name=".")),
         S.NOT_FOUND, "topic '.' does not exist", "UnknownTopicError"),
]

ADMIN_CASES = [
    Case("create-topic-zero-partitions", create_topic("matrix-zero", 0), S.INVALID_ARGUMENT,
         "partitions must be between 1 and 10000, got 0", "InvalidTopicError"),
    Case("create-topic-negative-partitions", create_topic("matrix-neg", -3), S.INVALID_ARGUMENT,
         "got -3", "InvalidTopicError"),
    Case("create-topic-too-many-partitions", create_topic("matrix-many", 10_001),
         S.INVALID_ARGUMENT, "got 10001", "InvalidTopicError"),
    Case("create-topic-unknown-config-key",
         create_topic("matrix-cfg", 1, {"retention.msec": "1"}), S.INVALID_ARGUMENT,
         "retention.msec", "InvalidConfigError"),
    Case("create-topic-config-out-of-range",
         create_topic("matrix-cfg", 1, {"max.message.bytes": "1"}), S.INVALID_ARGUMENT,
         "max.message.bytes", "InvalidConfigError"),
    Case("alter-config-not-an-integer",
         lambda ctx: ctx.stubs.admin.AlterTopicConfig(
             admin_pb2.AlterTopicConfigRequest(name=MAIN, set={"segment.bytes": "lots"})
         ),
         S.INVALID_ARGUMENT, "segment.bytes", "InvalidConfigError"),
    Case("alter-config-set-and-reset",
         lambda ctx: ctx.stubs.admin.AlterTopicConfig(
             admin_pb2.AlterTopicConfigRequest(
                 name=MAIN, set={"retention.ms": "5"}, reset=["retention.ms"]
             )
         ),
         S.INVALID_ARGUMENT, "are both set and reset", "InvalidRequestError"),
    Case("list-offsets-unknown-spec",
         lambda ctx: ctx.stubs.admin.ListOffsets(
             admin_pb2.ListOffsetsRequest(topic=MAIN, spec=common_pb2.OffsetSpec(kind=9))
         ),
         S.INVALID_ARGUMENT, "OffsetSpec.kind must be EARLIEST, LATEST or TIMESTAMP",
         "InvalidRequestError"),
]

CASES = BATCH_CASES + SIZE_CASES + REQUEST_CASES + PARTITION_CASES + NAME_CASES + ADMIN_CASES


# ---------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("matrix") / "data", env=LIMITS)
    process.start()
    yield process
    code = process.stop()
    log = process.log_text()
    assert code == 0, log
    assert "Traceback" not in log, log  # every refusal was expected, none was a crash


@pytest.fixture(scope="module")
def ctx(matrix_server: ServerProcess) -> Iterator[Ctx]:
    with grpc.insecure_channel(matrix_server.address) as channel:
        stubs = make_stubs(channel)
        for name, (partitions, configs) in TOPICS.items():
            stubs.admin.CreateTopic(
                admin_pb2.CreateTopicRequest(name=name, partitions=partitions, configs=configs)
            )
        yield Ctx(stubs, channel)


State = dict[str, list[tuple[int, int, int, int, int]]]


def stored_state(stubs: Stubs) -> State:
    """Every topic's partitions: (partition, log start, log end, high watermark, bytes)."""
    topics = stubs.admin.ListTopics(admin_pb2.ListTopicsRequest(include_internal=True)).topics
    state: State = {}
    for summary in topics:
        description = stubs.admin.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=summary.name)
        ).topic
        state[summary.name] = [
            (p.partition, p.log_start_offset, p.log_end_offset, p.high_watermark, p.size_bytes)
            for p in description.partitions
        ]
    return state


def refusal(send: Send, ctx: Ctx) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        send(ctx)
    return info.value


def reason_of(error: grpc.RpcError) -> str:
    metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return str(metadata.get(ERROR_METADATA_KEY, ""))


def assert_next_valid_request_succeeds(ctx: Ctx, state: State) -> None:
    (_, _, log_end, _, _) = state[MAIN][0]
    request = produce_pb2.ProduceRequest(topic=MAIN, partition=0, record_batch=VALID)
    (result,) = ctx.stubs.produce.Produce(request).results
    assert (result.base_offset, result.last_offset, result.duplicate) == (log_end, log_end, False)


# ---------------------------------------------------------------------------- tests


def test_the_matrix_is_big_enough_and_unique() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_request_is_refused_and_stores_nothing(case: Case, ctx: Ctx) -> None:
    before = stored_state(ctx.stubs)
    error = refusal(case.send, ctx)
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert (code, reason_of(error)) == (case.code, case.reason), details
    assert case.fragment in details, details
    assert stored_state(ctx.stubs) == before, "a refused request changed the stored state"
    assert_next_valid_request_succeeds(ctx, before)


STREAM_CASES = [
    case
    for case in CASES
    if isinstance(case.send, ProduceBatch) and (case.send.topic, case.send.partition) == (MAIN, 0)
]


def test_bad_batches_on_a_produce_stream_are_acked_with_their_error(ctx: Ctx) -> None:
    """On ProduceStream each refusal is one request's acknowledgement; the stream goes on."""
    assert len(STREAM_CASES) >= 40
    before = stored_state(ctx.stubs)
    sends = [case.send for case in STREAM_CASES]
    batches = [send.data for send in sends if isinstance(send, ProduceBatch)]
    requests = [
        produce_pb2.ProduceRequest(topic=MAIN, partition=0, record_batch=data, correlation_id=i)
        for i, data in enumerate([*batches, VALID])
    ]
    # refusals made before the append (request limits) are acked at once, out of order
    acks = sorted(ctx.stubs.produce.ProduceStream(iter(requests)), key=lambda a: a.correlation_id)
    assert [ack.correlation_id for ack in acks] == list(range(len(requests)))
    for case, ack in zip(STREAM_CASES, acks, strict=False):
        assert ack.WhichOneof("outcome") == "error", case.id
        assert ack.error.code == case.code.value[0], (case.id, ack.error.message)
        assert case.fragment in ack.error.message, (case.id, ack.error.message)
    (_, _, log_end, _, _) = before[MAIN][0]
    (result,) = acks[-1].response.results
    assert (result.base_offset, result.duplicate) == (log_end, False)
    after = stored_state(ctx.stubs)
    assert after[MAIN][0][2] == log_end + 1  # the valid batch, and nothing else
    assert {k: v for k, v in after.items() if k != MAIN} == {
        k: v for k, v in before.items() if k != MAIN
    }


def test_topic_name_length_boundary_249_is_accepted(ctx: Ctx) -> None:
    name = "b" * 249
    created = ctx.stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=name, partitions=1))
    assert created.topic.name == name
    request = produce_pb2.ProduceRequest(topic=name, partition=0, record_batch=VALID)
    assert ctx.stubs.produce.Produce(request).results[0].base_offset == 0
    ctx.stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name=name))
