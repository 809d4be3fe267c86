"""Raw TCP and HTTP/2 abuse of a live broker (RELIABILITY-PLAN T8, the part below gRPC).

``test_grpc_fuzz.py`` sends bad protobufs through a real gRPC client; this test goes below it
with hand-made bytes on raw sockets (:mod:`tests.fuzz.raw_http2`; no HTTP/2 library needed).
Two attack threads pick, at random, for ``GARBAGE_SECONDS`` (CI 20 s, nightly 600 s):

- ``garbage_preface``: random bytes instead of the HTTP/2 preface; the server must close the
  connection;
- ``preface_then_garbage``: a valid preface and SETTINGS, then random bytes;
- ``random_frames``: frames of random type (unknown ones included), flags, stream ids and
  payloads, some lying about their length;
- ``oversized_frame``: a frame header declaring 16 MiB - 1, over the server's
  SETTINGS_MAX_FRAME_SIZE; the server must send GOAWAY or close;
- ``huge_declared_message``: a gRPC call whose length prefix declares up to 4 GiB - 1, then
  abandoned; the server must answer RESOURCE_EXHAUSTED at once, allocating nothing for it;
- ``message_over_max_receive``: a message of ``max_request_bytes`` + 1 to + 64 KiB actually
  sent; the server must answer RESOURCE_EXHAUSTED;
- ``half_sent_message``: a Produce whose message stops half-way, left open;
- ``abandoned_streams``: 50-100 calls opened (headers only) on one connection, left open;
- ``too_many_streams``: more streams than ``max_in_flight_per_connection`` (lowered to 100
  here, see ``STREAM_LIMIT``); at least the excess must be ended (RST_STREAM REFUSED_STREAM,
  or gRPC's own shedding of calls it cannot take yet);
- ``rapid_reset``: 500-2,000 calls opened and reset at once (CVE-2023-44487);
- ``continuation_flood``: a header block that never ends (CVE-2024-27316); the server must end
  the stream or the connection;
- ``ping_flood`` and ``settings_garbage``: unanswered PINGs, SETTINGS with invalid values.

Connections that are left open go to a pool of at most ``KEPT_CONNECTIONS`` connections and
``KEPT_STREAMS`` abandoned calls; the oldest are closed when it is full, and all at the end.
Every call the server holds costs it about 25 KiB that it keeps after the connection closes
(``test_abandoned_calls_cost_little_memory_each`` measures it), so these two numbers, and
``STREAM_LIMIT``, are what keeps the run within the plan's 64 MiB.

Meanwhile a good client (the one of ``test_grpc_fuzz.py``) produces and reads back, and a
health checker polls. The run fails on: a server crash; a health check that is not SERVING;
any failure of the good client (INTERNAL and UNKNOWN are named apart); an expected reaction
that did not come within ``REACTION_S``; records stored from the raw calls (they are all
incomplete, oversized or garbage); an ERROR record in the server's log; RSS growth of 64 MiB or
more once the connections are closed. The good client's p99 against its baseline is printed,
not asserted (a benchmark figure). Every failure message starts with the seed.
"""

from __future__ import annotations

import random
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.records.batch import NewRecord, encode_batch
from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, admin_pb2_grpc, produce_pb2
from tests.faults.harness import MODE, log_end_offsets, make_rng
from tests.faults.observe import MIB, RssSampler, error_records, memory_of, read_log
from tests.fuzz import raw_http2 as h2
from tests.fuzz.test_grpc_fuzz import GoodClient

MAX_REQUEST_BYTES = MIB
#: Calls per connection (``max_in_flight_per_connection``), lowered from 1,000 so that filling
#: a connection stays cheap: every call the server holds costs it about 25 KiB that it keeps
#: (see ``test_abandoned_calls_cost_little_memory_each``).
STREAM_LIMIT = 100
ENV = {
    "MOLDAU_LOG_LEVEL": "WARNING",
    "MOLDAU_MAX_WAIT_MS": "200",
    "MOLDAU_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    "MOLDAU_MAX_BATCH_BYTES": str(512 * 1024),
    "MOLDAU_MAX_IN_FLIGHT_PER_CONNECTION": str(STREAM_LIMIT),
}
GARBAGE_SECONDS = {"ci": 20.0, "nightly": 600.0}[MODE]
ATTACKERS = 2
KEPT_CONNECTIONS = 24
#: Calls left open on the kept connections at once. Each costs the server about 25 KiB, and
#: memory once allocated stays in the process, so this also bounds the RSS growth of the run.
KEPT_STREAMS = 600
REACTION_S = 5.0
RSS_GROWTH_BOUND_MIB = 64
RAW_TOPIC = "raw"  # every raw Produce names it; nothing may ever be stored there
#: Methods the raw calls open: unary, client-, server- and bidirectional streaming.
METHODS = (
    "/moldau.v1.ProduceService/Produce",
    "/moldau.v1.ProduceService/ProduceStream",
    "/moldau.v1.FetchService/Fetch",
    "/moldau.v1.FetchService/Subscribe",
    "/moldau.v1.AdminService/ListTopics",
    "/moldau.v1.GroupService/Subscribe",
    "/grpc.health.v1.Health/Check",
)
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_REFUSED_STREAM = 0x7
_FRAME_CHUNK = 16_384  # the HTTP/2 minimum SETTINGS_MAX_FRAME_SIZE, so always allowed


@dataclass
class Attack:
    """What one attack thread shares with the others; appended under ``lock``."""

    address: str
    seed: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    kept: deque[tuple[h2.RawConnection, int]] = field(default_factory=deque)
    kept_streams: int = 0
    #: held by the attacks that open many calls at once, so two never overlap
    heavy: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    reactions: Counter[str] = field(default_factory=Counter)
    bugs: list[str] = field(default_factory=list)

    def keep(self, connection: h2.RawConnection, streams: int = 1) -> None:
        """Leave ``connection`` open with ``streams`` calls abandoned on it; close the oldest
        connections while the pool holds more than ``KEPT_CONNECTIONS`` or ``KEPT_STREAMS``."""
        closing = []
        with self.lock:
            self.kept.append((connection, streams))
            self.kept_streams += streams
            while len(self.kept) > KEPT_CONNECTIONS or self.kept_streams > KEPT_STREAMS:
                oldest, count = self.kept.popleft()
                self.kept_streams -= count
                closing.append(oldest)
        for oldest in closing:
            oldest.close()

    def close_kept(self) -> None:
        with self.lock:
            kept, self.kept, self.kept_streams = list(self.kept), deque(), 0
        for connection, _ in kept:
            connection.close()

    def bug(self, name: str, text: str) -> None:
        with self.lock:
            if len(self.bugs) < 30:
                self.bugs.append(f"{name} (MOLDAU_SEED={self.seed}): {text}")

    def reacted(self, name: str, how: str) -> None:
        with self.lock:
            self.reactions[f"{name}:{how}"] += 1


def _produce_body(rng: random.Random) -> bytes:
    """A valid ProduceRequest for the raw topic (sent incomplete or with a lying prefix)."""
    batch = encode_batch([NewRecord(rng.randbytes(rng.randint(1, 2000)))
                          for _ in range(rng.randint(1, 20))])
    return produce_pb2.ProduceRequest(topic=RAW_TOPIC, partition=0,
                                      record_batch=batch).SerializeToString()


def _connect(attack: Attack) -> h2.RawConnection:
    connection = h2.RawConnection(attack.address)
    connection.handshake()
    return connection


def _ended(frames: list[h2.Frame], connection: h2.RawConnection) -> str | None:
    """How the server ended things, if it did: GOAWAY, RST_STREAM, trailers, or a close."""
    for received in frames:
        if received.type == h2.GOAWAY:
            return "goaway"
        if received.type == h2.RST_STREAM:
            return "rst"
        if received.type == h2.HEADERS and received.flags & h2.END_STREAM:
            return "trailers"
    return "closed" if connection.closed_by_peer else None


_STOP = {h2.GOAWAY, h2.RST_STREAM}


# ---------------------------------------------------------------------- the attacks


def garbage_preface(attack: Attack, rng: random.Random) -> None:
    connection = h2.RawConnection(attack.address)
    try:
        junk = rng.randbytes(rng.randint(1, 4096))
        if junk[:1] == b"P":  # never a prefix of the real preface
            junk = b"X" + junk[1:]
        connection.send(junk)
        connection.frames_until(REACTION_S, stop={h2.GOAWAY})
        connection.frames_until(REACTION_S)  # then the close
        if not connection.closed_by_peer:
            attack.bug("garbage_preface", f"connection still open after {junk[:32].hex()}")
        else:
            attack.reacted("garbage_preface", "closed")
    finally:
        connection.close()


def preface_then_garbage(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    connection.send(rng.randbytes(rng.randint(1, 8192)))
    attack.reacted("preface_then_garbage",
                   _ended(connection.frames_until(0.2, stop={h2.GOAWAY}), connection) or "none")
    attack.keep(connection)


def random_frames(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    frames = []
    for _ in range(rng.randint(1, 20)):
        frame_type = rng.choice((*range(10), rng.randint(10, 255)))
        stream_id = rng.choice((0, 1, 2, 3, 2**31 - 1, rng.randrange(2**31)))
        payload = rng.randbytes(rng.choice((0, 1, 4, 5, 8, rng.randint(0, 300))))
        declared = None if rng.random() < 0.8 else rng.randint(0, 70_000)
        if frame_type == h2.HEADERS and rng.random() < 0.5:
            payload = h2.request_headers(attack.address, rng.choice(METHODS))
        frames.append(h2.frame(frame_type, rng.randrange(256), stream_id, payload, declared))
    connection.send(b"".join(frames))
    attack.reacted("random_frames",
                   _ended(connection.frames_until(0.2, stop={h2.GOAWAY}), connection) or "none")
    attack.keep(connection)


def oversized_frame(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    try:
        frame_type = rng.choice((h2.DATA, h2.HEADERS, h2.SETTINGS, 0x42))
        connection.send(h2.frame(frame_type, 0, 1, rng.randbytes(rng.randint(0, 1000)),
                                 declared_length=0xFFFFFF))
        how = _ended(connection.frames_until(REACTION_S, stop={h2.GOAWAY}), connection)
        if how not in ("goaway", "closed"):
            attack.bug("oversized_frame", f"a 16 MiB frame of type {frame_type} got {how}")
        else:
            attack.reacted("oversized_frame", how)
    finally:
        connection.close()


def huge_declared_message(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    method = rng.choice(METHODS)
    declared = rng.choice((2**32 - 1, 2**31, MAX_REQUEST_BYTES + 1, rng.randint(2**21, 2**32 - 1)))
    body = _produce_body(rng)[:rng.randint(0, 4096)]
    connection.send(h2.headers_frame(1, h2.request_headers(attack.address, method))
                    + h2.data_frame(1, h2.grpc_message(body, declared_length=declared)))
    frames = connection.frames_until(REACTION_S, stop=_STOP)
    status = h2.grpc_status(frames, 1)
    if status != _RESOURCE_EXHAUSTED:
        attack.bug("huge_declared_message",
                   f"{method} declaring {declared} bytes got status {status}, "
                   f"{_ended(frames, connection)}")
    else:
        attack.reacted("huge_declared_message", "RESOURCE_EXHAUSTED")
    attack.keep(connection)  # abandoned: never sends the rest


def message_over_max_receive(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    try:
        body = rng.randbytes(MAX_REQUEST_BYTES + rng.randint(1, 64 * 1024))
        message = h2.grpc_message(body)
        chunks = [message[i:i + _FRAME_CHUNK] for i in range(0, len(message), _FRAME_CHUNK)]
        connection.send(
            h2.headers_frame(1, h2.request_headers(attack.address, METHODS[0]))
            + b"".join(h2.data_frame(1, chunk, end_stream=i == len(chunks) - 1)
                       for i, chunk in enumerate(chunks))
        )
        frames = connection.frames_until(REACTION_S, stop=_STOP)
        status = h2.grpc_status(frames, 1)
        if status != _RESOURCE_EXHAUSTED:
            attack.bug("message_over_max_receive",
                       f"a {len(body)}-byte message got status {status}, "
                       f"{_ended(frames, connection)}")
        else:
            attack.reacted("message_over_max_receive", "RESOURCE_EXHAUSTED")
    finally:
        connection.close()


def half_sent_message(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    streams = rng.randint(1, 20)
    for stream in range(streams):
        body = _produce_body(rng)
        message = h2.grpc_message(body)
        cut = rng.randint(1, len(message) - 1)
        connection.send(h2.headers_frame(2 * stream + 1,
                                         h2.request_headers(attack.address, METHODS[0]))
                        + h2.data_frame(2 * stream + 1, message[:cut]))
    frames = connection.frames_until(0.2, stop=_STOP)
    answered = [f for f in frames if f.type in (h2.HEADERS, h2.DATA)]
    if answered:
        attack.bug("half_sent_message", f"a half-sent call was answered: {answered[:3]}")
    attack.keep(connection, streams)


def abandoned_streams(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    count = rng.randint(STREAM_LIMIT // 2, STREAM_LIMIT)
    connection.send(b"".join(
        h2.headers_frame(2 * i + 1, h2.request_headers(attack.address, rng.choice(METHODS)))
        for i in range(count)
    ))
    attack.keep(connection, count)


def too_many_streams(attack: Attack, rng: random.Random) -> None:
    """More calls than ``max_in_flight_per_connection``: at least the excess must be ended
    (refused with RST_STREAM REFUSED_STREAM, or others cancelled by gRPC's own shedding)."""
    connection = _connect(attack)
    try:
        attack.heavy.acquire()
        limit = STREAM_LIMIT  # announced in SETTINGS_MAX_CONCURRENT_STREAMS
        extra = rng.randint(1, 50)
        block = h2.request_headers(attack.address, "/moldau.v1.FetchService/Subscribe")
        connection.send(b"".join(h2.headers_frame(2 * i + 1, block)
                                 for i in range(limit + extra)))
        deadline = time.monotonic() + REACTION_S
        ended: set[int] = set()
        refused = 0
        while len(ended) < extra and not connection.closed_by_peer:
            received = connection.read_frame(deadline - time.monotonic())
            if received is None:
                break
            if received.type == h2.RST_STREAM or (
                received.type == h2.HEADERS and received.flags & h2.END_STREAM
            ):
                ended.add(received.stream_id)
                refused += received.payload == struct.pack(">I", _REFUSED_STREAM)
        if len(ended) < extra and not connection.closed_by_peer:
            attack.bug("too_many_streams",
                       f"{limit + extra} streams opened, only {len(ended)} ended")
        else:
            attack.reacted("too_many_streams", "refused" if refused else "shed")
    finally:
        connection.close()
        attack.heavy.release()


def rapid_reset(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    try:
        attack.heavy.acquire()
        count = rng.randint(500, 2000)
        method = rng.choice(METHODS)
        block = h2.request_headers(attack.address, method)
        cancel = struct.pack(">I", 0x8)
        connection.send(b"".join(
            h2.headers_frame(2 * i + 1, block) + h2.frame(h2.RST_STREAM, 0, 2 * i + 1, cancel)
            for i in range(count)
        ))
        attack.reacted("rapid_reset", _ended(connection.frames_until(
            0.5, stop={h2.GOAWAY}), connection) or "none")
    finally:
        connection.close()
        attack.heavy.release()


def continuation_flood(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    try:
        block = h2.request_headers(attack.address, rng.choice(METHODS))
        connection.send(h2.frame(h2.HEADERS, 0, 1, block))  # no END_HEADERS
        filler = b"\x00" + bytes((10,)) + b"x-flood-00" + bytes((100,)) + b"v" * 100
        sent = 0
        how = None
        deadline = time.monotonic() + REACTION_S
        while how is None and time.monotonic() < deadline:
            if not connection.send(h2.frame(h2.CONTINUATION, 0, 1, filler * 100)):
                break
            sent += 1
            how = _ended(connection.frames_until(0.001, stop={h2.GOAWAY}), connection)
        how = how or _ended(connection.frames_until(REACTION_S, stop=_STOP), connection)
        if how is None:
            attack.bug("continuation_flood",
                       f"{sent} CONTINUATION frames of 11 KiB and no end to the stream")
        else:
            attack.reacted("continuation_flood", how)
    finally:
        connection.close()


def ping_flood(attack: Attack, rng: random.Random) -> None:
    connection = _connect(attack)
    try:
        pings = b"".join(h2.frame(h2.PING, 0, 0, rng.randbytes(8)) for _ in range(1000))
        for _ in range(rng.randint(1, 10)):
            connection.sock.settimeout(1.0)
            if not connection.send(pings):  # the server may hang up: too many pings
                break
        attack.reacted("ping_flood", "closed" if connection.closed_by_peer else "open")
    finally:
        connection.close()


def settings_garbage(attack: Attack, rng: random.Random) -> None:
    connection = h2.RawConnection(attack.address)
    settings = {rng.randrange(1, 10): rng.choice((0, 1, 2, 2**31, 2**32 - 1, 16_383, 2**24))
                for _ in range(rng.randint(1, 6))}
    connection.send(h2.PREFACE + h2.settings_frame(settings)
                    + h2.window_update_frame(rng.choice((0, 1)), rng.choice((0, 2**31 - 1))))
    attack.reacted("settings_garbage",
                   _ended(connection.frames_until(0.2, stop={h2.GOAWAY}), connection) or "none")
    attack.keep(connection)


ATTACKS: tuple[Callable[[Attack, random.Random], None], ...] = (
    garbage_preface, preface_then_garbage, random_frames, oversized_frame,
    huge_declared_message, message_over_max_receive, half_sent_message, abandoned_streams,
    too_many_streams, rapid_reset, continuation_flood, ping_flood, settings_garbage,
)


def _attacker(attack: Attack, worker: int, stop_at: float) -> None:
    rng = random.Random(f"{attack.seed}:{worker}")
    while time.monotonic() < stop_at:
        chosen = rng.choice(ATTACKS)
        with attack.lock:
            attack.counts[chosen.__name__] += 1
        try:
            chosen(attack, rng)
        except OSError as exc:  # our socket failing is fine; the server's health is checked
            attack.reacted(chosen.__name__, type(exc).__name__)


# ---------------------------------------------------------------------- health


@dataclass
class HealthWatch:
    """Polls the health service; every answer must be SERVING."""

    address: str
    checks: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.wait(0.2):
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                    continue
                self.checks += 1
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(f"status {reply.status}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", env=ENV)
    process.start()
    with grpc.insecure_channel(process.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for topic in (RAW_TOPIC, "good"):
            admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=1), timeout=10)
    yield process
    process.stop()


def _p99_ms(latencies_s: list[float]) -> float:
    ordered = sorted(latencies_s)
    return ordered[int(len(ordered) * 0.99)] * 1000 if ordered else float("nan")


def _settled_rss(pid: int, timeout_s: float = 5.0) -> float:
    """RSS once it stops falling (cancelled calls are freed shortly after their connection)."""
    deadline = time.monotonic() + timeout_s
    last = memory_of(pid).rss
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = memory_of(pid).rss
        if now >= last - 0.5:
            return now
        last = now
    return last


def test_http2_garbage_never_hurts_the_server_or_a_good_client(server: ServerProcess) -> None:
    seed, _ = make_rng("http2-garbage")
    assert server.process is not None
    pid = server.process.pid
    good = GoodClient(server.address)
    health = HealthWatch(server.address)
    stop = threading.Event()
    good_thread = threading.Thread(target=good.run, args=(stop,), daemon=True)
    health_thread = threading.Thread(target=health.run, args=(stop,), daemon=True)
    good_thread.start()
    health_thread.start()
    baseline_until = time.monotonic() + 2.0
    while time.monotonic() < baseline_until or good.ok < 20:  # warm-up and baseline latency
        assert time.monotonic() < baseline_until + 30, f"MOLDAU_SEED={seed}: good client stuck"
        time.sleep(0.05)
    baseline_ops = good.ok
    baseline_p99 = _p99_ms(good.latencies_s[:baseline_ops])
    idle = _settled_rss(pid)
    attack = Attack(server.address, seed)
    started = time.monotonic()
    with RssSampler(pid) as memory:
        threads = [threading.Thread(target=_attacker,
                                    args=(attack, worker, started + GARBAGE_SECONDS), daemon=True)
                   for worker in range(ATTACKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GARBAGE_SECONDS + 120)
        elapsed = time.monotonic() - started
        attack.close_kept()
    stop.set()
    good_thread.join(30)
    health_thread.join(30)
    alive = server.process.poll() is None
    after = _settled_rss(pid) if alive else float("nan")
    stored = log_end_offsets(server.address, RAW_TOPIC, 1)[0] if alive else -1
    codes = Counter(f.split(":", 1)[0] for f in good.failures)
    core_lines = Counter(line[:1] for line in read_log(server.log_path).splitlines()
                         if line[:1] in "IWE" and line[1:5].isdigit())
    summary = (
        f"MOLDAU_SEED={seed} mode={MODE}: {sum(attack.counts.values())} attacks in "
        f"{elapsed:.0f} s ({dict(attack.counts)}); reactions {dict(attack.reactions)}; "
        f"good client ops={good.ok} failures={len(good.failures)} {dict(codes)}, p99 "
        f"{baseline_p99:.1f} ms before / {_p99_ms(good.latencies_s[baseline_ops:]):.1f} ms "
        f"during; health checks {health.checks}; RSS idle {idle:.0f} MiB, peak {memory.peak}, "
        f"after {after:.0f} MiB (+{after - idle:.0f} MiB); raw records stored {stored}; gRPC "
        f"core log lines I/W/E {core_lines['I']}/{core_lines['W']}/{core_lines['E']}"
    )
    print(summary, file=sys.stderr)
    assert alive, f"{summary}\nthe server died:\n{read_log(server.log_path)[-3000:]}"
    assert not any(thread.is_alive() for thread in threads), f"an attack hung: {summary}"
    assert not attack.bugs, summary + "\n" + "\n".join(attack.bugs)
    assert not codes.keys() & {"INTERNAL", "UNKNOWN"}, summary + "\n" + "\n".join(good.failures)
    assert not good.failures, summary + "\n" + "\n".join(good.failures[:10])
    assert good.ok > baseline_ops, f"the good client made no progress: {summary}"
    assert not health.failures, summary + "\n" + "\n".join(health.failures[:10])
    assert health.checks > 0, summary
    assert stored == 0, f"{summary}: a raw call that never completed stored records"
    assert after - idle < RSS_GROWTH_BOUND_MIB, summary
    errors = error_records(read_log(server.log_path))
    assert not errors, f"{summary}\nthe server logged errors:\n" + "\n".join(errors)[-3000:]


def test_abandoned_calls_cost_little_memory_each(server: ServerProcess) -> None:
    """The figure behind ``KEPT_STREAMS``: memory per call opened and never finished.

    Nothing bounds these calls across connections (each connection may hold
    ``max_in_flight_per_connection`` of them, 1,000 by default), so their unit cost is what an
    abusive client can multiply; the test fails if it grows past 64 KiB. The memory is not
    returned to the system when the connections close (the "after closing" figure).
    """
    seed, rng = make_rng("http2-abandoned")
    assert server.process is not None
    pid = server.process.pid
    idle = _settled_rss(pid)
    connections = []
    calls = 0
    with RssSampler(pid) as memory:
        for index in range(15):
            method = (METHODS[0], METHODS[3], METHODS[1])[index % 3]  # unary, bidi, client
            connection = h2.RawConnection(server.address)
            connections.append(connection)
            connection.handshake()
            count = rng.randint(STREAM_LIMIT * 4 // 5, STREAM_LIMIT)
            block = h2.request_headers(server.address, method)
            connection.send(b"".join(h2.headers_frame(2 * i + 1, block) for i in range(count)))
            calls += count
        settled_by = time.monotonic() + 10
        last = memory_of(pid).rss
        while time.monotonic() < settled_by:  # the server creates the calls, then RSS is flat
            time.sleep(0.25)
            now = memory_of(pid).rss
            if now - last < 0.25:
                break
            last = now
        ended = sum(  # the server holds every call: none refused or ended
            _ended(connection.frames_until(0.05), connection) is not None
            for connection in connections
        )
        for connection in connections:
            connection.close()
    after = _settled_rss(pid)
    per_call_kib = (memory.peak.rss - idle) * 1024 / calls
    summary = (
        f"MOLDAU_SEED={seed} mode={MODE}: {calls} abandoned calls on 15 connections: RSS idle "
        f"{idle:.0f} MiB, peak {memory.peak} ({per_call_kib:.1f} KiB per call), after closing "
        f"{after:.0f} MiB"
    )
    print(summary, file=sys.stderr)
    assert server.process.poll() is None, summary
    assert ended == 0, f"{summary}: {ended} connections had calls ended by the server"
    assert per_call_kib <= 64, summary
