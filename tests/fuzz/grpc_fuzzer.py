"""Request generation for the gRPC fuzzer: random and mutated protobufs from the descriptors.

Every service in ``clients/python/moldau/v1/*_pb2.py`` is fuzzed, so a service added later is
covered without touching this file. A request is one of:

- ``random``: a message built field by field from its descriptor, with values drawn from
  edge cases (0, -1, int32/int64 limits, huge counts, unknown enum numbers, empty, very long,
  unicode, ``.``/``..``, NUL and slash names, valid and damaged RecordBatch bytes);
- ``mutated``: a valid-looking request with one to three fields replaced that way;
- ``bytes``: the serialized bytes of either, damaged: bit flips, truncation, inserted or
  repeated chunks, random bytes (these often do not parse as the message at all).

The requests go out as raw bytes (identity serializers), so damaged ones reach the server.
"""

from __future__ import annotations

import glob
import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from engine.records.batch import NewRecord, encode_batch
from engine.records.compression import Codec

__all__ = ["PROTECTED_TOPICS", "Method", "RequestFactory", "all_methods"]

#: Topics whose log end offsets the fuzzer accounts for; only produce, fetch and read-only
#: calls may name them (a fuzzed DeleteTopic or retention change would move their offsets).
PROTECTED_TOPICS = ("fzp-0", "fzp-1")
PROTECTED_PARTITIONS = 2
PROTECTED_MARK = b"fzp-"
_MAY_NAME_PROTECTED = {
    "Produce", "ProduceStream", "Fetch", "Subscribe", "ListOffsets", "DescribeTopic",
    "ListTopics", "FetchOffsets", "DescribeGroup", "ListGroups",
}

_FD = pb_descriptor.FieldDescriptor


@dataclass(frozen=True, slots=True)
class Method:
    service: str
    name: str
    path: str
    input: pb_descriptor.Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def may_name_protected(self) -> bool:
        return self.name in _MAY_NAME_PROTECTED and self.service != "moldau.v1.EventStoreService"


def all_methods() -> list[Method]:
    """Every RPC of every generated ``*_pb2`` module of the Python client."""
    import moldau.v1

    directory = Path(moldau.v1.__file__).parent
    methods = []
    for path in sorted(glob.glob(str(directory / "*_pb2.py"))):
        module = importlib.import_module(f"moldau.v1.{Path(path).stem}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.append(Method(
                    service.full_name, method.name, f"/{service.full_name}/{method.name}",
                    method.input_type, method.client_streaming, method.server_streaming,
                ))
    return methods


_INT32 = (0, 1, -1, 2, 7, 2**31 - 1, -(2**31), 1_000_000, -1_000_000)
_INT64 = (*_INT32, 2**63 - 1, -(2**63), 2**40, -(2**40), 1_700_000_000_000)
_UINT32 = (0, 1, 2, 2**32 - 1, 2**31)
_UINT64 = (0, 1, 2**64 - 1, 2**63, 2**40)
_NAMES = (
    "", ".", "..", "a/b", "../etc", "x" * 250, "x" * 300, "ørders-ü", "名前", "\x00", "a\nb",
    "__consumer_offsets", "fz-a", "fz-b", "fz-c", "g-1", "-", "*", "orders.*", "$all", " ",
)


class RequestFactory:
    """Makes requests (as bytes) for one method at a time from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        now = 1_700_000_000_000
        self.batches = [
            encode_batch([NewRecord(b"v%d" % i) for i in range(rng.randint(1, 5))],
                         codec=Codec(rng.randrange(5)), timestamp=now)
            for _ in range(16)
        ] + [
            encode_batch([NewRecord(b"idem", key=b"k")], producer_id=rng.randrange(2**40),
                         producer_epoch=0, base_sequence=rng.choice((0, 0, 5, 2**31 - 1)))
            for _ in range(8)
        ]

    # ------------------------------------------------------------------ values

    def _name(self, protected: bool) -> str:
        rng = self.rng
        if protected and rng.random() < 0.5:
            return rng.choice(PROTECTED_TOPICS)
        if rng.random() < 0.2:
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randint(1, 40)))
        return rng.choice(_NAMES)

    def _bytes(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return rng.choice(self.batches)
        if roll < 0.7:
            return self.damage(rng.choice(self.batches))
        if roll < 0.8:
            return rng.choice(self.batches) * rng.randint(2, 3)  # several batches in one field
        return rng.randbytes(rng.choice((0, 1, 12, 61, 200)))

    def _scalar(self, field: pb_descriptor.FieldDescriptor, protected: bool) -> Any:
        rng = self.rng
        kind = field.cpp_type
        if kind == _FD.CPPTYPE_STRING:
            if field.type == _FD.TYPE_BYTES:
                return self._bytes()
            return self._name(protected)
        if kind == _FD.CPPTYPE_INT32:
            return rng.choice(_INT32) if rng.random() < 0.7 else rng.randint(-5, 64)
        if kind == _FD.CPPTYPE_INT64:
            return rng.choice(_INT64) if rng.random() < 0.7 else rng.randint(-5, 5_000)
        if kind == _FD.CPPTYPE_UINT32:
            return rng.choice(_UINT32)
        if kind == _FD.CPPTYPE_UINT64:
            return rng.choice(_UINT64) if rng.random() < 0.5 else rng.randrange(1000)
        if kind == _FD.CPPTYPE_BOOL:
            return rng.random() < 0.5
        if kind in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
            return rng.choice((0.0, -1.0, 1e300, float("nan"), float("inf")))
        if kind == _FD.CPPTYPE_ENUM:
            assert field.enum_type is not None
            numbers = [v.number for v in field.enum_type.values]
            return rng.choice(numbers) if rng.random() < 0.8 else rng.choice((-1, 99, 2**31 - 1))
        raise AssertionError(f"unhandled field type {field.full_name}")

    def _fill_field(self, message: Message, field: pb_descriptor.FieldDescriptor,
                    depth: int, protected: bool) -> None:
        rng = self.rng
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            container = getattr(message, field.name)
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(rng.randint(0, 3)):
                key = self._scalar(key_field, protected)
                if value_field.message_type is not None:
                    self.fill(container[key], depth + 1, protected)
                else:
                    container[key] = self._scalar(value_field, protected)
            return
        if field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(rng.choice((0, 1, 2, 3, 50))):
                if field.message_type is not None:
                    self.fill(container.add(), depth + 1, protected)
                else:
                    container.append(self._scalar(field, protected))
            return
        if field.message_type is not None:
            self.fill(getattr(message, field.name), depth + 1, protected)
            return
        setattr(message, field.name, self._scalar(field, protected))

    def fill(self, message: Message, depth: int = 0, protected: bool = False) -> Message:
        """Set a random subset of the fields (recursively, at most 4 levels deep)."""
        if depth > 4:
            return message
        fields: list[Any] = list(message.DESCRIPTOR.fields)
        for field in fields:
            if self.rng.random() < 0.55:
                self._fill_field(message, field, depth, protected)
        if depth > 0 and not message.ListFields():
            message.SetInParent()
        return message

    # ------------------------------------------------------------------ requests

    def valid(self, method: Method) -> Any:
        """A plausible request: fields set the way a client would, then a few randomized."""
        cls: Any = GetMessageClass(method.input)
        rng = self.rng
        if method.input.full_name == "moldau.v1.ProduceRequest":
            topic = rng.choice(PROTECTED_TOPICS)
            if rng.random() < 0.6:
                return cls(topic=topic, partition=rng.randrange(PROTECTED_PARTITIONS),
                           record_batch=rng.choice(self.batches))
            request = cls(topic=topic)
            if rng.random() < 0.5:
                request.partition = rng.randrange(PROTECTED_PARTITIONS)
            for i in range(rng.randint(1, 4)):
                request.records.records.add(value=b"r%d" % i)
            return request
        if method.input.full_name == "moldau.v1.FetchRequest":
            return cls(topic=rng.choice(PROTECTED_TOPICS),
                       partition=rng.randrange(PROTECTED_PARTITIONS), offset=rng.randint(0, 50),
                       max_bytes=rng.choice((0, 100, 65536)), decoded=rng.random() < 0.5)
        if method.input.full_name == "moldau.v1.CreateTopicRequest":
            return cls(name=rng.choice(("fz-a", "fz-b", "fz-c")), partitions=rng.randint(1, 3))
        return self.fill(cls(), protected=method.may_name_protected)

    def mutated(self, method: Method) -> Message:
        message: Message = self.valid(method)
        fields: list[Any] = list(message.DESCRIPTOR.fields)
        for _ in range(self.rng.randint(1, 3) if fields else 0):
            field = self.rng.choice(fields)
            message.ClearField(field.name)
            self._fill_field(message, field, 1, method.may_name_protected)
        return message

    def damage(self, data: bytes) -> bytes:
        """Bit flips, truncation, insertion or duplication of a chunk."""
        rng = self.rng
        buf = bytearray(data)
        steps: list[Callable[[], None]] = []

        def flip() -> None:
            if buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)

        def cut() -> None:
            del buf[rng.randint(0, len(buf)):]

        def insert() -> None:
            at = rng.randint(0, len(buf))
            buf[at:at] = rng.randbytes(rng.randint(1, 16))

        def repeat() -> None:
            if buf:
                start = rng.randrange(len(buf))
                buf[start:start] = buf[start: start + rng.randint(1, 64)]

        steps = [flip, flip, flip, cut, insert, repeat]
        for _ in range(rng.randint(1, 4)):
            rng.choice(steps)()
        return bytes(buf)

    def request(self, method: Method) -> tuple[str, bytes]:
        """(kind, serialized request) for ``method``."""
        roll = self.rng.random()
        if roll < 0.35:
            cls = GetMessageClass(method.input)
            return "random", self.fill(cls(), protected=method.may_name_protected)\
                .SerializeToString()
        if roll < 0.7:
            return "mutated", self.mutated(method).SerializeToString()
        base = self.mutated(method) if self.rng.random() < 0.5 else self.valid(method)
        return "bytes", self.damage(base.SerializeToString())
