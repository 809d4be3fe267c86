"""Just enough HTTP/2 (RFC 9113) on a raw socket to misbehave on purpose.

The abuse and overload tests need connections no well-behaved library would make: garbage
instead of the preface, a gRPC message whose length prefix lies, streams that are opened and
never finished, a reader that never reads. This module writes the frames by hand:

- frame header: 24-bit length, 8-bit type, 8-bit flags, 1 reserved bit + 31-bit stream id;
- request headers: HPACK "literal header field without indexing, new name" (0x00) with plain
  (not Huffman) strings, which every decoder must accept;
- a gRPC message: 1-byte compressed flag, 4-byte big-endian length, the protobuf bytes.

Responses are read as frames (types, flags, stream ids, payloads); header blocks are not
decoded, but :func:`grpc_status` finds a ``grpc-status`` the server sent as a literal (gRPC's
encoder does so the first time on a connection, since the name is not in HPACK's static table).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEADERS",
    "MAX_WINDOW",
    "PING",
    "PREFACE",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_INITIAL_WINDOW_SIZE",
    "WINDOW_UPDATE",
    "Frame",
    "RawConnection",
    "data_frame",
    "frame",
    "grpc_message",
    "grpc_status",
    "headers_frame",
    "request_headers",
    "settings_frame",
    "window_update_frame",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = (
    0, 1, 2, 3, 4, 5, 6, 7, 8
)
CONTINUATION = 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x2, 0x4, 0x5
MAX_WINDOW = 2**31 - 1

_HEADER = struct.Struct(">I")  # length << 8 | type, then flags and stream id separately


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"",
          declared_length: int | None = None) -> bytes:
    """One frame; ``declared_length`` lies about the payload length when given."""
    length = len(payload) if declared_length is None else declared_length
    return (
        _HEADER.pack((length & 0xFFFFFF) << 8 | frame_type)
        + bytes((flags,))
        + struct.pack(">I", stream_id & 0x7FFFFFFF)
        + payload
    )


def settings_frame(settings: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment & 0x7FFFFFFF))


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(text: bytes) -> bytes:
    return _hpack_int(len(text), 7) + text


def request_headers(authority: str, path: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The HPACK block of a gRPC request (literal fields, no indexing, no Huffman)."""
    fields = (
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"), *extra,
    )
    return b"".join(
        b"\x00" + _hpack_string(name.encode()) + _hpack_string(value.encode())
        for name, value in fields
    )


def headers_frame(stream_id: int, block: bytes, end_stream: bool = False) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block)


def data_frame(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def grpc_message(body: bytes, declared_length: int | None = None) -> bytes:
    """A length-prefixed gRPC message; ``declared_length`` lies about the length when given."""
    length = len(body) if declared_length is None else declared_length
    return b"\x00" + struct.pack(">I", length) + body


_GRPC_STATUS = b"\x0bgrpc-status"  # the name as a plain HPACK string (length 11)


def grpc_status(frames: list[Frame], stream_id: int) -> int | None:
    """The ``grpc-status`` in the HEADERS of ``stream_id`` when sent as a plain literal."""
    for received in frames:
        if received.type != HEADERS or received.stream_id != stream_id:
            continue
        at = received.payload.find(_GRPC_STATUS)
        if at < 0:
            continue
        length_at = at + len(_GRPC_STATUS)
        length = received.payload[length_at]
        if length & 0x80:  # Huffman-coded: not decoded here
            return None
        value = received.payload[length_at + 1:length_at + 1 + length]
        if value.isdigit():
            return int(value)
    return None


class RawConnection:
    """A TCP connection to ``host:port`` speaking hand-made HTTP/2 (or not)."""

    def __init__(self, address: str, timeout_s: float = 5.0,
                 receive_buffer_bytes: int | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.authority = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer_bytes is not None:  # before connect, so the TCP window is small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect((host, int(port)))
        except OSError:
            self.sock.close()
            raise
        self._buffer = b""
        self.closed_by_peer = False

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False when the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_by_peer = True
            return False
        return True

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        """Preface and SETTINGS, then read until the server's SETTINGS arrive and ack them."""
        self.send(PREFACE + settings_frame(settings))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            received = self.read_frame(deadline - time.monotonic())
            if received is None:
                break
            if received.type == SETTINGS and not received.flags & ACK:
                self.send(settings_frame(ack=True))
                return
        raise ConnectionError(f"no SETTINGS from {self.authority}")

    def read_frame(self, timeout_s: float) -> Frame | None:
        """The next frame, or None at the timeout or when the server closed the connection."""
        deadline = time.monotonic() + timeout_s
        while len(self._buffer) < 9 or len(self._buffer) < 9 + (self._buffer[0] << 16
                                                                  | self._buffer[1] << 8
                                                                  | self._buffer[2]):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed_by_peer:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed_by_peer = True
                return None
            self._buffer += chunk
        length = self._buffer[0] << 16 | self._buffer[1] << 8 | self._buffer[2]
        head, self._buffer = self._buffer[:9 + length], self._buffer[9 + length:]
        stream_id = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
        return Frame(head[3], head[4], stream_id, head[9:])

    def frames_until(self, timeout_s: float, stop: set[int] | None = None) -> list[Frame]:
        """Frames until one of type ``stop`` arrives (included), the timeout, or EOF."""
        deadline = time.monotonic() + timeout_s
        frames: list[Frame] = []
        while True:
            received = self.read_frame(deadline - time.monotonic())
            if received is None:
                return frames
            frames.append(received)
            if received.type == PING and not received.flags & ACK:
                self.send(frame(PING, ACK, 0, received.payload))
            if stop is not None and received.type in stop:
                return frames

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
