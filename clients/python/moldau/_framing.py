"""The TCP port's framing (proto/moldau/v1/tcp.proto), one copy for the broker and the client.

A leaf module (``struct`` only): the broker's ``grpc_api.tcp_port`` imports it as it imports
the generated ``moldau.v1`` messages, so both ends cannot drift apart.
"""

from __future__ import annotations

import struct

__all__ = ["CANCEL", "HALF_CLOSE", "HEAD", "MAGIC", "MESSAGE", "OPEN", "STATUS",
           "FrameSizeError", "frame", "take_frames"]

#: What a client sends first: "MOLDAU", NUL, framing version 1.
MAGIC = b"MOLDAU\x00\x01"
#: length (of call id + kind + payload), call id, kind
HEAD = struct.Struct(">IIB")
OPEN, MESSAGE, HALF_CLOSE, STATUS, CANCEL = range(5)


class FrameSizeError(Exception):
    """A frame header announces a length outside 5..limit: the stream is not ours, or hostile."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes (at most {limit})")
        self.length = length


def frame(call_id: int, kind: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload) + 5, call_id, kind) + payload


def take_frames(buffer: bytearray, limit: int) -> list[tuple[int, int, bytes]]:
    """Remove the whole frames at the front of ``buffer``: ``(call_id, kind, payload)``.

    A partial frame stays for the next read. A bad length raises :class:`FrameSizeError` as
    soon as its header is in, so an oversized frame is never buffered.
    """
    frames = []
    position = 0
    size = HEAD.size
    while len(buffer) - position >= size:
        length, call_id, kind = HEAD.unpack_from(buffer, position)
        if not 5 <= length <= limit:
            raise FrameSizeError(length, limit)
        end = position + 4 + length
        if len(buffer) < end:
            break
        frames.append((call_id, kind, bytes(buffer[position + size:end])))
        position = end
    if position:
        del buffer[:position]
    return frames
