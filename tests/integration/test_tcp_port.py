"""The TCP port (``--tcp-listen``): the same RPCs as gRPC over plain frames.

A real server process; the Python client's ``tcp_address`` path, and a raw socket speaking the
framing of proto/moldau/v1/tcp.proto for what a client library would never send.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grpc_api.testing
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from grpc_api.auth import hash_token
from grpc_api.testing import ServerProcess
from moldau import Admin, Consumer, Producer
from moldau._acl_admin import Acl
from moldau.errors import AuthenticationError, PermissionDeniedError, TopicNotFoundError
from moldau.v1 import admin_pb2, fetch_pb2, produce_pb2, tcp_pb2
from tests.integration.support import LIMITS, StartServer

ROOT = Path(__file__).resolve().parents[2]
MAGIC = b"MOLDAU\x00\x01"
HEAD = struct.Struct(">IIB")
OPEN, MESSAGE, HALF_CLOSE, STATUS, CANCEL = range(5)
PRODUCE_STREAM = "/moldau.v1.ProduceService/ProduceStream"
SUBSCRIBE = "/moldau.v1.FetchService/Subscribe"
LIST_TOPICS = "/moldau.v1.AdminService/ListTopics"


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("tcp") / "data", env=LIMITS,
                            extra_args=["--tcp-listen", "127.0.0.1:0"])
    process.start()
    assert process.tcp_address.startswith("127.0.0.1:")
    yield process
    assert process.stop() == 0, process.log_text()


_names = iter(range(1_000_000))


def new_topic(server: ServerProcess, partitions: int = 1, **configs: str) -> str:
    name = f"tcp-{next(_names)}"
    with Admin(server.address) as admin:
        admin.create_topic(name, partitions, configs)
    return name


class Raw:
    """A blocking socket speaking the frames by hand."""

    def __init__(self, address: str, greeting: bytes = MAGIC) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(greeting)

    def send(self, call_id: int, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(HEAD.pack(len(payload) + 5, call_id, kind) + payload)

    def open(self, call_id: int, method: str, metadata: dict[str, str] | None = None) -> None:
        opened = tcp_pb2.TcpOpen(method=method)
        for key, value in (metadata or {}).items():
            opened.metadata.add(key=key, value=value)
        self.send(call_id, OPEN, opened.SerializeToString())

    def read(self) -> tuple[int, int, bytes]:
        head = self._exactly(HEAD.size)
        length, call_id, kind = HEAD.unpack(head)
        return call_id, kind, self._exactly(length - 5)

    def status(self, call_id: int) -> tuple[tcp_pb2.TcpStatus, list[bytes]]:
        """Read until ``call_id`` ends; its status and the messages it got."""
        messages = []
        while True:
            got_id, kind, payload = self.read()
            if got_id != call_id:
                continue
            if kind == STATUS:
                return tcp_pb2.TcpStatus.FromString(payload), messages
            assert kind == MESSAGE
            messages.append(payload)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


def list_topics_status(raw: Raw, call_id: int) -> int:
    """Run ListTopics as call ``call_id`` on ``raw``; its status code."""
    raw.open(call_id, LIST_TOPICS)
    raw.send(call_id, MESSAGE, b"")
    raw.send(call_id, HALF_CLOSE)
    return raw.status(call_id)[0].code


def assert_lists_topics(address: str) -> None:
    """A fresh connection is served: the broker is unharmed."""
    good = Raw(address)
    try:
        assert list_topics_status(good, 1) == 0
    finally:
        good.close()


# ---------------------------------------------------------------------------- the client path


def test_records_go_in_and_out_through_the_tcp_port_as_through_grpc(
    tcp_server: ServerProcess,
) -> None:
    topic = new_topic(tcp_server, 2, durability="fsync")
    sent = [(f"k{i % 7}".encode(), f"value-{i}".encode() * (i % 5 + 1)) for i in range(2_000)]
    with Producer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  linger_ms=1) as producer:
        futures = [producer.send(topic, value, key=key, headers=[("n", str(i).encode())])
                   for i, (key, value) in enumerate(sent)]
        metadata = [f.result(30) for f in futures]
    assert sorted((m.partition, m.offset) for m in metadata) == sorted(
        (p, o) for p in (0, 1) for o in range(sum(1 for m in metadata if m.partition == p)))

    def read_all(tcp: str | None) -> list[tuple[int, int, bytes | None, bytes | None, list]]:
        got = []
        with Consumer(tcp_server.address, tcp_address=tcp,
                      auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, 0), (topic, 1)])
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                for r in consumer.poll(timeout_ms=500):
                    got.append((r.partition, r.offset, r.key, r.value, list(r.headers)))
        return sorted(got)

    over_tcp = read_all(tcp_server.tcp_address)
    over_grpc = read_all(None)
    assert len(over_tcp) == len(sent)
    assert over_tcp == over_grpc
    assert sorted((k, v) for _, _, k, v, _ in over_tcp) == sorted(sent)


def test_threads_sending_at_once_over_tcp_keep_their_order_and_lose_nothing(
    tcp_server: ServerProcess,
) -> None:
    """With linger 0 each thread writes its batches itself (or hands them to the loop when
    another writer holds the connection): per partition, each thread's records stay in
    the order it sent them, and every record is stored once."""
    topic = new_topic(tcp_server, 3, durability="async")
    per_thread, threads = 1_500, 4
    with Producer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  linger_ms=0) as producer:
        def work(t: int) -> None:
            for i in range(per_thread):
                producer.send(topic, f"{t}:{i}".encode(), key=f"k{i % 5}".encode())

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        producer.flush(60)
    seen: dict[tuple[int, int], list[int]] = {}
    count = 0
    with Consumer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        deadline = time.monotonic() + 30
        while count < per_thread * threads and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500):
                t, i = map(int, (record.value or b"").split(b":"))
                seen.setdefault((record.partition, t), []).append(i)
                count += 1
    assert count == per_thread * threads
    for (partition, t), numbers in seen.items():
        assert numbers == sorted(numbers), f"thread {t}, partition {partition}: out of order"
    assert sorted(i for (_, t), ns in seen.items() for i in ns if t == 0) == list(
        range(per_thread))


def test_small_batches_that_roll_segments_go_through_the_worker_path(
    tcp_server: ServerProcess,
) -> None:
    """Batches stored on the broker's event loop never roll a segment there (a roll fsyncs):
    with tiny segments most sends hand over to a worker, and nothing is lost or reordered."""
    topic = new_topic(tcp_server, 1, durability="async", **{"segment.bytes": "4096"})
    with Producer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  linger_ms=0) as producer:
        # one record per batch (each acknowledged before the next is sent): ~12 per segment
        offsets = [producer.send(topic, b"%04d" % i + b"." * 300, partition=0).result(30).offset
                   for i in range(400)]
    assert offsets == list(range(400))
    with Admin(tcp_server.address) as admin:
        admin_info = admin.describe_topic(topic)
        segments = sum(p.segment_count for p in admin_info.partitions)
    assert segments > 20, admin_info
    with Consumer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < 400 and time.monotonic() < deadline:
            values += [(r.value or b"")[:4] for r in consumer.poll(timeout_ms=500)]
    assert values == [b"%04d" % i for i in range(400)]


def test_large_batches_written_faster_than_the_socket_takes_them_arrive_whole(
    tcp_server: ServerProcess,
) -> None:
    """Batches of ~256 KiB, sent with linger 0 from the calling thread: the socket takes part
    of a frame, the rest waits in the link's backlog for the loop to flush, in order."""
    topic = new_topic(tcp_server, 1, durability="async")
    values = [b"%06d" % i + b"x" * 2042 for i in range(3_000)]  # ~6 MB
    with Producer(tcp_server.address, tcp_address=tcp_server.tcp_address, linger_ms=0,
                  batch_size=256 * 1024) as producer:
        futures = [producer.send_many(topic, values[i:i + 120], partition=0)
                   for i in range(0, len(values), 120)]
        for future in futures:
            future.result(60)
    got: list[bytes] = []
    with Consumer(tcp_server.address, tcp_address=tcp_server.tcp_address,
                  auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        deadline = time.monotonic() + 60
        while len(got) < len(values) and time.monotonic() < deadline:
            for batch in consumer.poll_batches(timeout_ms=500):
                got += batch.values()  # type: ignore[arg-type]
    assert got == values


def test_client_errors_over_tcp_are_the_grpc_errors(tcp_server: ServerProcess) -> None:
    with (Producer(tcp_server.address, tcp_address=tcp_server.tcp_address) as producer,
          pytest.raises(TopicNotFoundError, match="does not exist")):
            producer.send("no-such-topic", b"x", partition=0).result(30)


def test_the_consumer_survives_a_broker_restart_on_the_tcp_port(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The connection breaks; the fetcher's retry (UNAVAILABLE) reconnects and resumes."""
    server = start_server(tmp_path / "data", extra_args=["--tcp-listen", "127.0.0.1:0"])
    topic = new_topic(server)
    with Producer(server.address, tcp_address=server.tcp_address) as producer:
        producer.send_many(topic, [b"a%d" % i for i in range(100)], partition=0).result(30)
    address, tcp = server.address, server.tcp_address
    with Consumer(address, tcp_address=tcp, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        got = []
        while len(got) < 100:
            got += consumer.poll(timeout_ms=1000)
        assert server.stop() == 0
        port = tcp.rsplit(":", 1)[1]
        again = start_server(tmp_path / "data", extra_args=[
            "--listen", address, "--tcp-listen", f"127.0.0.1:{port}"])
        assert again.tcp_address == tcp
        with Producer(again.address, tcp_address=again.tcp_address) as producer:
            producer.send_many(topic, [b"b%d" % i for i in range(50)], partition=0).result(30)
        deadline = time.monotonic() + 30
        while len(got) < 150 and time.monotonic() < deadline:
            got += consumer.poll(timeout_ms=500)
    assert [r.offset for r in got] == list(range(150))


# ---------------------------------------------------------------------------- the raw framing


def test_a_unary_call_works_over_tcp(tcp_server: ServerProcess) -> None:
    topic = new_topic(tcp_server)
    raw = Raw(tcp_server.tcp_address)
    try:
        raw.open(7, LIST_TOPICS)
        raw.send(7, MESSAGE, admin_pb2.ListTopicsRequest().SerializeToString())
        raw.send(7, HALF_CLOSE)
        status, messages = raw.status(7)
        assert status.code == 0, status
        names = [t.name for t in admin_pb2.ListTopicsResponse.FromString(messages[0]).topics]
        assert topic in names
    finally:
        raw.close()


def test_pipelined_produce_and_subscribe_on_one_connection(tcp_server: ServerProcess) -> None:
    topic = new_topic(tcp_server)
    raw = Raw(tcp_server.tcp_address)
    try:
        raw.open(1, SUBSCRIBE)
        start = fetch_pb2.SubscribeStart(topic=topic, partition=0, offset=0, credit_bytes=1 << 20)
        raw.send(1, MESSAGE, fetch_pb2.SubscribeRequest(start=start).SerializeToString())
        raw.open(2, PRODUCE_STREAM)
        for i in range(5):
            batch = encode_batch([NewRecord(b"r%d" % i)])
            request = produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch,
                                                 correlation_id=100 + i)
            raw.send(2, MESSAGE, request.SerializeToString())
        raw.send(2, HALF_CLOSE)
        acks: list[produce_pb2.ProduceStreamResponse] = []
        pushed = 0
        ended = False
        while not ended or pushed < 5:
            call_id, kind, payload = raw.read()
            if call_id == 2 and kind == MESSAGE:
                acks.append(produce_pb2.ProduceStreamResponse.FromString(payload))
            elif call_id == 2:
                assert kind == STATUS
                assert tcp_pb2.TcpStatus.FromString(payload).code == 0
                ended = True
            elif call_id == 1:
                assert kind == MESSAGE, tcp_pb2.TcpStatus.FromString(payload)
                response = fetch_pb2.SubscribeResponse.FromString(payload)
                pushed = response.next_offset
        assert [a.correlation_id for a in acks] == [100, 101, 102, 103, 104]
        assert [a.response.results[0].base_offset for a in acks] == [0, 1, 2, 3, 4]
        raw.send(1, CANCEL)
        status, _ = raw.status(1)
        assert status.code == grpc.StatusCode.CANCELLED.value[0]
    finally:
        raw.close()


@pytest.mark.parametrize(("method", "message", "code", "words"), [
    ("/moldau.v1.NoService/Nothing", b"", grpc.StatusCode.UNIMPLEMENTED, "unknown method"),
    (SUBSCRIBE, b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "is not a valid"),
    (LIST_TOPICS, b"\x0a\x05ab", grpc.StatusCode.INVALID_ARGUMENT, "is not a valid"),
])
def test_bad_calls_get_a_status_and_the_connection_stays_usable(
    tcp_server: ServerProcess, method: str, message: bytes, code: grpc.StatusCode, words: str
) -> None:
    raw = Raw(tcp_server.tcp_address)
    try:
        raw.open(3, method)
        raw.send(3, MESSAGE, message)
        raw.send(3, HALF_CLOSE)
        status, _ = raw.status(3)
        assert status.code == code.value[0], status
        assert words in status.message
        assert list_topics_status(raw, 4) == 0  # same connection, next call
    finally:
        raw.close()


def test_out_of_range_subscribe_says_so(tcp_server: ServerProcess) -> None:
    topic = new_topic(tcp_server)
    raw = Raw(tcp_server.tcp_address)
    try:
        raw.open(1, SUBSCRIBE)
        start = fetch_pb2.SubscribeStart(topic=topic, partition=0, offset=99, credit_bytes=1024)
        raw.send(1, MESSAGE, fetch_pb2.SubscribeRequest(start=start).SerializeToString())
        status, _ = raw.status(1)
        assert status.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
        assert ("moldau-error", "OffsetOutOfRangeError") in [
            (m.key, m.value) for m in status.metadata]
    finally:
        raw.close()


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\n\r\n",  # someone pointed a browser at it
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # a gRPC client on the wrong port
    MAGIC + HEAD.pack(3, 1, OPEN),  # a frame shorter than its own header
    MAGIC + HEAD.pack(64 << 20, 1, MESSAGE),  # over max_request_bytes: never buffered
    MAGIC + HEAD.pack(6, 1, 9) + b"x",  # unknown kind
    MAGIC + HEAD.pack(7, 1, OPEN) + b"\xff\xff",  # an OPEN that is no TcpOpen
])
def test_protocol_violations_close_that_connection_only(
    tcp_server: ServerProcess, junk: bytes
) -> None:
    raw = Raw(tcp_server.tcp_address, greeting=b"")
    try:
        raw.sock.sendall(junk)
        assert raw.closed_by_server()
    finally:
        raw.close()
    assert_lists_topics(tcp_server.tcp_address)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.binary(max_size=64)),
                max_size=8))
def test_fuzzed_frames_never_hurt_the_broker(
    tcp_server: ServerProcess, frames: list[tuple[int, int, bytes]]
) -> None:
    """Any sequence of frames: answered or dropped, and the broker serves the next client."""
    raw = Raw(tcp_server.tcp_address)
    try:
        for call_id, kind, payload in frames:
            raw.send(call_id, kind, payload)
        raw.sock.shutdown(socket.SHUT_WR)
        raw.sock.settimeout(10)
        while True:  # answers, until the server ends the connection (half-close or a violation)
            raw.read()
    except (EOFError, OSError):  # reset, broken pipe, or already shut by the server
        pass
    finally:
        raw.close()
    assert_lists_topics(tcp_server.tcp_address)


def test_calls_past_the_per_connection_limit_are_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Each open call is a task on the broker: a connection gets max_in_flight_per_connection
    of them (as gRPC's max_concurrent_streams), one more is RESOURCE_EXHAUSTED."""
    server = start_server(tmp_path / "data", env={"MOLDAU_MAX_IN_FLIGHT_PER_CONNECTION": "3"},
                          extra_args=["--tcp-listen", "127.0.0.1:0"])
    topic = new_topic(server)
    raw = Raw(server.tcp_address)
    try:
        start = fetch_pb2.SubscribeStart(topic=topic, partition=0, offset=0, credit_bytes=1024)
        for call_id in (1, 2, 3):  # three subscriptions that stay open
            raw.open(call_id, SUBSCRIBE)
            raw.send(call_id, MESSAGE, fetch_pb2.SubscribeRequest(start=start).SerializeToString())
        raw.open(4, LIST_TOPICS)
        status, _ = raw.status(4)
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "max_in_flight_per_connection" in status.message
        raw.send(1, CANCEL)
        assert raw.status(1)[0].code == grpc.StatusCode.CANCELLED.value[0]
        assert list_topics_status(raw, 5) == 0  # room again
    finally:
        raw.close()


# ---------------------------------------------------------------------------- shutdown, crash


def test_shutdown_ends_open_calls_with_unavailable(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "data", env={"MOLDAU_SHUTDOWN_GRACE_MS": "200"},
                          extra_args=["--tcp-listen", "127.0.0.1:0"])
    topic = new_topic(server)
    raw = Raw(server.tcp_address)
    try:
        raw.open(1, SUBSCRIBE)
        start = fetch_pb2.SubscribeStart(topic=topic, partition=0, offset=0, credit_bytes=1024)
        raw.send(1, MESSAGE, fetch_pb2.SubscribeRequest(start=start).SerializeToString())
        raw.read()  # the first push confirms the start
        assert server.stop() == 0
        status, _ = raw.status(1)
        assert status.code == grpc.StatusCode.UNAVAILABLE.value[0], status
    finally:
        raw.close()


def test_acknowledged_records_survive_kill_9(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_args=["--tcp-listen", "127.0.0.1:0"])
    topic = new_topic(server)  # durability=fsync, the default
    acknowledged = []
    with Producer(server.address, tcp_address=server.tcp_address, linger_ms=0) as producer:
        futures = [producer.send(topic, b"rec-%d" % i, partition=0) for i in range(500)]
        for future in futures:
            acknowledged.append(future.result(30).offset)
        server.kill()
    again = start_server(tmp_path / "data")
    with Consumer(again.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        values = []
        deadline = time.monotonic() + 30
        while len(values) < len(acknowledged) and time.monotonic() < deadline:
            values += [r.value for r in consumer.poll(timeout_ms=500)]
    assert values[: len(acknowledged)] == [b"rec-%d" % i for i in acknowledged]


# ---------------------------------------------------------------------------- security


TOKENS = {"writer": "w-secret", "reader": "r-secret", "admin": "a-secret"}


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS on both ports, bearer tokens, anonymous refused, writer may write ``orders``."""
    base = tmp_path_factory.mktemp("tcp-secure")
    ca = base / "ca"
    subprocess.run([str(ROOT / "scripts" / "make-test-ca.sh"), str(ca), "admin"],
                   check=True, capture_output=True)
    tokens = base / "tokens.toml"
    tokens.write_text("[tokens]\n" + "".join(f'{n} = "{hash_token(t)}"\n'
                                           for n, t in TOKENS.items()))
    process = ServerProcess(base / "data", extra_args=["--tcp-listen", "127.0.0.1:0"], env={
        **LIMITS,
        "MOLDAU_TLS_CERT_FILE": str(ca / "server.pem"),
        "MOLDAU_TLS_KEY_FILE": str(ca / "server.key"),
        "MOLDAU_AUTH_TOKENS_FILE": str(tokens),
        "MOLDAU_ALLOW_ANONYMOUS": "false",
        "MOLDAU_SUPER_USERS": "User:admin",
    })
    with pytest.MonkeyPatch.context() as patch:  # the health probe is plaintext
        patch.setattr(grpc_api.testing, "wait_for_serving", lambda *_args: None)
        process.start()
    ca_file = str(ca / "ca.pem")
    with Admin(process.address, token=TOKENS["admin"], tls_ca_file=ca_file) as admin:
        admin.create_topic("orders", 1)
        admin.create_acls([Acl("User:writer", "topic", "orders", "write")])
    process.ca_file = ca_file  # type: ignore[attr-defined]
    yield process
    assert process.stop() == 0, process.log_text()


def test_tls_tokens_and_acls_apply_on_the_tcp_port(secure_server: ServerProcess) -> None:
    ca_file = secure_server.ca_file  # type: ignore[attr-defined]

    def send(token: str | None) -> int:
        with Producer(secure_server.address, tcp_address=secure_server.tcp_address,
                      token=token, tls_ca_file=ca_file, delivery_timeout_ms=20_000) as producer:
            return producer.send("orders", b"x", partition=0).result(30).offset

    assert send(TOKENS["writer"]) == 0
    with pytest.raises(PermissionDeniedError, match="User:reader"):
        send(TOKENS["reader"])
    with pytest.raises(AuthenticationError):
        send(None)
    with pytest.raises(AuthenticationError):
        send("wrong")


def test_plaintext_on_a_tls_tcp_port_is_dropped(secure_server: ServerProcess) -> None:
    raw = Raw(secure_server.tcp_address)
    try:
        raw.open(1, LIST_TOPICS)
        with pytest.raises((EOFError, ConnectionResetError, TimeoutError, OSError)):
            raw.status(1)
    finally:
        raw.close()


def test_a_non_loopback_tcp_port_without_auth_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_api", "--listen", "127.0.0.1:0",
         "--tcp-listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 with authentication off" in result.stderr


def test_a_taken_tcp_port_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "grpc_api", "--listen", "127.0.0.1:0",
             "--tcp-listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (tcp_listen)" in result.stderr


def test_a_fetch_quota_paces_pushes_to_a_subscriber_at_the_tail(
    start_server: StartServer,
) -> None:
    """A subscriber waiting at the tail gets its push in the producer's own loop turn, past
    its response stream; the fetch quota's pacing sits on that stream, so a paced
    subscription must never take that shortcut. Produced at 400 KiB/s, paced to 32 KiB/s."""
    rate = 32 * 1024
    server = start_server(env={"MOLDAU_QUOTA_FETCH_BYTES_PER_SEC": str(rate)},
                          extra_args=["--tcp-listen", "127.0.0.1:0"])
    topic = new_topic(server)
    raw = Raw(server.tcp_address)
    pushes: list[int] = []
    try:
        raw.open(1, SUBSCRIBE)
        start = fetch_pb2.SubscribeStart(topic=topic, partition=0, offset=0,
                                         credit_bytes=64 << 20)
        raw.send(1, MESSAGE, fetch_pb2.SubscribeRequest(start=start).SerializeToString())
        raw.read()  # the start's empty push: the subscription waits at the tail

        def count() -> None:
            raw.sock.settimeout(30)
            try:
                while True:
                    call_id, kind, payload = raw.read()
                    if call_id == 1 and kind == MESSAGE:
                        push = fetch_pb2.SubscribeResponse.FromString(payload)
                        pushes.append(len(push.record_batches))
            except (OSError, EOFError):
                return

        reader = threading.Thread(target=count, daemon=True)
        reader.start()
        seconds = 2.0
        with Producer(server.address, tcp_address=server.tcp_address,
                      linger_ms=0) as producer:
            began = time.monotonic()
            for n in range(int(seconds * 100)):
                time.sleep(max(0.0, began + n / 100 - time.monotonic()))
                producer.send(topic, b"x" * 4096, partition=0)
            producer.flush(30)
            elapsed = time.monotonic() - began
        sizes = list(pushes)
    finally:
        raw.close()
    # a push is admitted while the principal is not in debt and then debited in full: the
    # rate, one burst (a quarter second) and the largest push
    allowed = rate * (elapsed + 0.25) + max(sizes, default=0)
    assert 0 < sum(sizes) <= allowed, (
        f"{sum(sizes)} bytes in {len(sizes)} pushes in {elapsed:.1f} s, quota {rate} B/s")
