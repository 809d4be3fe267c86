"""Lost and late responses, through a TCP fault proxy (RELIABILITY-PLAN T13), on a live server.

An idempotent :class:`moldau.Producer` sends unique records to a 2-partition topic of a real
broker through :class:`~tests.faults.proxy.FaultProxy`:

- **cut**: the proxy aborts each connection after a random 200-3,000 bytes of responses, so
  acknowledgements of batches the broker already stored are lost. The client requeues what
  was in flight and resends it, byte for byte, on a new connection; the broker must answer
  the batches it holds as duplicates, with their original offsets.
- **delay**: every response chunk is held 50-500 ms (order kept). Late acknowledgements must
  not make anything be written twice.

Afterwards, read straight from the broker (not through the proxy) and checked by
:func:`tests.faults.checker.check`: every send was acknowledged, every acknowledged record is
stored exactly once at the offset it was acknowledged with, offsets are contiguous, each
partition holds its records in send order, and (cut) resends were in fact answered as
duplicates: the count of lost-response-then-retry events is > 0. ``-s`` prints a summary line.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau import Producer
from moldau._futures import RecordFuture
from moldau.v1 import admin_pb2, admin_pb2_grpc
from tests.faults.checker import History, check
from tests.faults.harness import MODE, log_end_offsets, make_rng
from tests.faults.proxy import Cut, Delay, Fault, FaultProxy, Forward, ProxyStats
from tests.faults.workload import read_all

PARTITIONS = 2
WRITER = "idem"
#: Records per test by mode: (cut, delay).
RECORDS = {"ci": (20_000, 3_000), "nightly": (200_000, 30_000)}[MODE]


@dataclass(slots=True)
class Outcome:
    """What one run through the proxy showed."""

    sent: list[list[bytes]]  # per partition, in send order
    history: History
    failures: list[str]
    deduplicated: int  # batches the broker answered as duplicates (resends it already held)
    batches: int
    stats: ProxyStats
    seconds: float


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("proxy") / "data",
                            env={"MOLDAU_LOG_LEVEL": "WARNING"},
                            extra_args=["--tcp-listen", "127.0.0.1:0"])
    process.start()
    yield process
    log = process.log_text()
    assert process.stop() == 0, log
    assert "Traceback" not in log, log[-3000:]


def _create_topic(address: str, topic: str) -> None:
    with grpc.insecure_channel(address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
            admin_pb2.CreateTopicRequest(name=topic, partitions=PARTITIONS), timeout=10
        )


def _produce_through(address: str, topic: str, records: int, fault: Fault,
                     rng: random.Random, tcp_address: str | None = None) -> Outcome:
    """Send ``records`` through a proxy applying ``fault``; wait for every outcome.

    With ``tcp_address`` the proxy sits in front of the broker's TCP port instead, and the
    producer lingers 0 ms, so batches leave from this thread (``send_direct``) while the
    loop thread handles the cuts: the two writers of one connection.
    """
    history = History(idempotent_writers={WRITER})
    sent: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    futures: list[tuple[bytes, RecordFuture]] = []
    started = time.monotonic()
    with FaultProxy(tcp_address or address, rng, fault) as proxy:
        # small batches, so a run has over a thousand, five in flight per partition
        if tcp_address is None:
            producer = Producer(proxy.address, idempotent=True, linger_ms=2, batch_size=2048,
                                retry_backoff_ms=20, delivery_timeout_ms=90_000)
        else:
            producer = Producer(address, tcp_address=proxy.address, idempotent=True,
                                linger_ms=0, batch_size=2048, retry_backoff_ms=20,
                                delivery_timeout_ms=90_000)
        try:
            for n in range(records):
                value = f"{WRITER}:{n}:".encode().ljust(100, b".")
                partition = n % PARTITIONS
                history.attempted.add(value)
                sent[partition].append(value)
                futures.append((value, producer.send(topic, value, partition=partition)))
            producer.flush(timeout=120)
        finally:
            proxy.set_fault(Forward())  # let close finish whatever is left
            producer.close(timeout=30)
        stats = proxy.stats
    failures: list[str] = []
    completions = {}
    for value, future in futures:
        error = future.exception(0)
        if error is not None:
            failures.append(f"{value[:12]!r}: {error!r}")
            continue
        metadata = future.result(0)
        history.acked[value] = (WRITER, metadata.partition, metadata.offset)
        # RecordMetadata does not carry the broker's "duplicate" answer; the batch's
        # completion, which every record future of the batch shares, does
        completions[id(future._completion)] = future._completion
    deduplicated = sum(1 for c in completions.values() if c.duplicate)
    return Outcome(sent, history, failures, deduplicated, len(completions), stats,
                   time.monotonic() - started)


def _check_stored(address: str, topic: str, outcome: Outcome, at: str) -> int:
    """Read everything back from the broker itself and check it; returns records stored."""
    ends = log_end_offsets(address, topic, PARTITIONS)
    stored = read_all(address, topic, f"{topic}-check", ends)
    result = check(outcome.history, stored, ends, check_group=False)
    assert outcome.failures == [], f"{at}: sends failed: {outcome.failures[:5]}"
    assert result.ok, f"{at}: anomalies: {result.anomalies}"
    assert result.duplicates_by_writer[WRITER] == 0, f"{at}: {result.duplicates_by_writer}"
    for partition in range(PARTITIONS):
        values = [value for _, value in stored[partition]]
        assert values == outcome.sent[partition], (
            f"{at}: partition {partition} holds {len(values)} records, "
            f"{len(outcome.sent[partition])} were sent once each, in this order"
        )
    return result.stored


def _summary(at: str, phase: str, outcome: Outcome, stored: int) -> str:
    stats = outcome.stats
    delays = sorted(stats.delays_s)
    median = f", median delay {delays[len(delays) // 2] * 1000:.0f} ms" if delays else ""
    return (
        f"{at}: {phase}: {len(outcome.history.acked)} records acked in {outcome.batches} "
        f"batches, {stored} stored, 0 duplicates, 0 lost; {stats.connections} connections, "
        f"{stats.cuts} cuts ({stats.cuts_dropping_responses} dropping {stats.dropped_bytes} "
        f"response bytes), {outcome.deduplicated} resends answered as duplicates, "
        f"{stats.delayed_chunks} delayed chunks{median}; {outcome.seconds:.1f} s"
    )


def test_lost_responses_are_retried_and_deduplicated(server: ServerProcess) -> None:
    seed, rng = make_rng("proxy-cut")
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    _create_topic(server.address, "cut")
    outcome = _produce_through(server.address, "cut", RECORDS[0], Cut(200, 3_000), rng)
    stored = _check_stored(server.address, "cut", outcome, at)
    print(_summary(at, "cut", outcome, stored), file=sys.stderr)
    _assert_cut_acks_were_resent(server, outcome, at)
    # a duplicate answer needs a lost acknowledgement: at most max_in_flight (5) per
    # partition per cut
    assert outcome.deduplicated <= outcome.stats.cuts * 5 * PARTITIONS, (
        f"{at}: {outcome.deduplicated}"
    )


def test_lost_responses_on_the_tcp_port_are_retried_and_deduplicated(
    server: ServerProcess,
) -> None:
    seed, rng = make_rng("proxy-cut-tcp")
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    _create_topic(server.address, "cut-tcp")
    outcome = _produce_through(server.address, "cut-tcp", RECORDS[0] // 4, Cut(200, 3_000),
                               rng, tcp_address=server.tcp_address)
    stored = _check_stored(server.address, "cut-tcp", outcome, at)
    print(_summary(at, "cut over the TCP port", outcome, stored), file=sys.stderr)
    _assert_cut_acks_were_resent(server, outcome, at)


def _assert_cut_acks_were_resent(server: ServerProcess, outcome: Outcome, at: str) -> None:
    """Cuts dropped acknowledgements, their batches were resent and answered as duplicates,
    and the server lived through it."""
    stats = outcome.stats
    assert stats.cuts_dropping_responses > 0, f"{at}: no cut dropped a response: {stats}"
    # a duplicate answer is a resend, on a new connection, of a batch whose ack was cut off
    assert outcome.deduplicated > 0, (
        f"{at}: {stats.cuts} cuts dropped responses, yet no resend was answered as a duplicate"
    )
    assert server.process is not None
    assert server.process.poll() is None, f"{at}: the server died"


def test_delayed_responses_cause_no_duplicates(server: ServerProcess) -> None:
    seed, rng = make_rng("proxy-delay")
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    _create_topic(server.address, "late")
    outcome = _produce_through(server.address, "late", RECORDS[1], Delay(0.05, 0.5), rng)
    stored = _check_stored(server.address, "late", outcome, at)
    print(_summary(at, "delay", outcome, stored), file=sys.stderr)
    stats = outcome.stats
    assert stats.delayed_chunks > 0, f"{at}: nothing was delayed: {stats}"
    assert max(stats.delays_s) >= 0.05, f"{at}: {stats}"
    assert stats.cuts == 0, f"{at}: {stats}"
    # no response was lost, so nothing was resent: a late ack is not a reason to retry
    assert outcome.deduplicated == 0, f"{at}: {outcome.deduplicated} resends"
    assert stats.connections == 1, f"{at}: the client reconnected: {stats}"


def test_proxy_forwards_cuts_and_delays() -> None:
    """The proxy itself, over a plain echo server: the bytes, the delay and the cut."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def echo() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        upstream = f"127.0.0.1:{listener.getsockname()[1]}"
        with FaultProxy(upstream, random.Random(1)) as proxy:
            host, port = proxy.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as client:
                client.sendall(b"hello")
                assert _recv_exactly(client, 5) == b"hello"
            proxy.set_fault(Delay(0.2, 0.2))
            with socket.create_connection((host, int(port)), timeout=5) as client:
                began = time.monotonic()
                client.sendall(b"late")
                assert _recv_exactly(client, 4) == b"late"
                assert time.monotonic() - began >= 0.19
            proxy.set_fault(Cut(10, 10))
            with socket.create_connection((host, int(port)), timeout=5) as client:
                client.sendall(b"0123456789abcdef")
                received = b""
                while chunk := _recv_or_reset(client):
                    received += chunk
                assert received == b"0123456789"
            stats = proxy.stats
        assert (stats.connections, stats.cuts, stats.cuts_dropping_responses,
                stats.dropped_bytes) == (3, 1, 1, 6)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _recv_or_reset(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""
