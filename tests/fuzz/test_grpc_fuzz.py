"""gRPC fuzzing of a live broker (RELIABILITY-PLAN T8): random and mutated requests to every RPC.

Worker threads send requests from :mod:`tests.fuzz.grpc_fuzzer` to a real server for a fixed
time (``MOLDAU_FAULTS=nightly`` runs longer) while a well-behaved client keeps producing and
reading back on its own topic. The run fails on:

- a server crash (the process must be alive at the end and answer health checks);
- a hang: a unary call without an answer within its deadline (long-polls are capped at
  ``max_wait_ms`` = 200 ms here, so any DEADLINE_EXCEEDED is a hang);
- an INTERNAL or UNKNOWN status: every rejection needs a specific code and a message;
- anything stored by a rejected request: the log end offsets of the fuzzed topics must equal
  the records the server acknowledged (checked every few thousand requests);
- any failure of the good client, or fewer requests than the mode's minimum.

A body that is not valid protobuf for the method fails inside gRPC's deserializer, before any
servicer runs; the call-context interceptor turns it into INVALID_ARGUMENT (asserted on its own
by ``test_undecodable_body_is_invalid_argument``), so it gets no exemption here.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError

from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    fetch_pb2,
    fetch_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
)
from tests.faults.harness import MODE, SCALE, make_rng
from tests.fuzz.grpc_fuzzer import (
    PROTECTED_MARK,
    PROTECTED_PARTITIONS,
    PROTECTED_TOPICS,
    Method,
    RequestFactory,
    all_methods,
)

ENV = {
    "MOLDAU_LOG_LEVEL": "WARNING",
    "MOLDAU_MAX_WAIT_MS": "200",
    "MOLDAU_MAX_REQUEST_BYTES": str(1024 * 1024),
    "MOLDAU_MAX_BATCH_BYTES": str(512 * 1024),
    "MOLDAU_MAX_TOPICS": "200",
    "MOLDAU_MAX_PARTITIONS_PER_TOPIC": "8",
    "MOLDAU_MAX_PARTITIONS": "1000",
}
WORKERS = 6
UNARY_DEADLINE_S = 10.0
STREAM_DEADLINE_S = 1.0
_S = grpc.StatusCode


@dataclass
class Findings:
    """What the fuzz workers saw; appended under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    bugs: list[str] = field(default_factory=list)
    undecodable: int = 0
    paused: int = 0
    #: (topic, partition) -> records the server acknowledged as newly stored
    accepted: Counter[tuple[str, int]] = field(default_factory=Counter)

    def bug(self, text: str) -> None:
        with self.lock:
            if len(self.bugs) < 30:
                self.bugs.append(text)


def _count_produce(findings: Findings, topics: list[str], response: bytes, stream: bool) -> None:
    """Credit the records an OK produce response says it stored.

    ``topics[i]`` is the topic of the stream's request with correlation id ``i`` (or of the
    unary request).
    """
    if stream:
        reply = produce_pb2.ProduceStreamResponse.FromString(response)
        if not reply.HasField("response") or reply.correlation_id >= len(topics):
            return
        results = reply.response.results
        topic = topics[reply.correlation_id]
    else:
        results = produce_pb2.ProduceResponse.FromString(response).results
        topic = topics[0]
    with findings.lock:
        for result in results:
            if not result.HasField("error") and not result.duplicate and result.base_offset >= 0:
                findings.accepted[(topic, result.partition)] += (
                    result.last_offset - result.base_offset + 1
                )


def _endless(method: Method) -> bool:
    """Subscriptions stream until cancelled; every other call must end by itself."""
    return method.server_streaming and method.name != "ProduceStream"


def _classify(findings: Findings, method: Method, kind: str, error: grpc.RpcError,
              endless: bool, data: bytes, seed: int) -> None:
    code = error.code()
    details = error.details() or ""
    with findings.lock:
        findings.codes[code.name] += 1
    if code == _S.INVALID_ARGUMENT and "is not a valid" in details:
        with findings.lock:
            findings.undecodable += 1
    where = f"{method.path} ({kind}, MOLDAU_SEED={seed}) request={data[:120].hex()}"
    if code in (_S.INTERNAL, _S.UNKNOWN):
        findings.bug(f"{code.name}: {details} at {where}")
    elif code == _S.DEADLINE_EXCEEDED and not endless:
        findings.bug(f"hang: no answer within {UNARY_DEADLINE_S} s at {where}")
    elif code not in (_S.DEADLINE_EXCEEDED, _S.CANCELLED) and not details.strip():
        findings.bug(f"{code.name} without a message at {where}")


def _stream_requests(
    factory: RequestFactory, method: Method, rng: random.Random
) -> tuple[list[bytes], str]:
    """One to three request messages.

    ProduceStream requests must parse (a body that does not is the unary calls' and
    ``test_undecodable_body_*``'s business: it ends the whole stream before the acks of the
    earlier requests are sent, leaving their outcome unknown) and get correlation ids 0, 1, 2
    so each acknowledgement maps back to its topic.
    """
    messages = []
    kind = "mutated"
    for i in range(rng.randint(1, 3)):
        kind, data = factory.request(method)
        if method.name == "ProduceStream":
            try:
                parsed = produce_pb2.ProduceRequest.FromString(data)
            except DecodeError:
                parsed = produce_pb2.ProduceRequest.FromString(
                    factory.mutated(method).SerializeToString()
                )
            parsed.correlation_id = i
            data = parsed.SerializeToString()
        messages.append(data)
    return messages, kind


def _fuzz_worker(address: str, methods: list[Method], seed: int, worker: int,
                 stop_at: float, findings: Findings, pause: threading.Event) -> None:
    rng = random.Random(f"{seed}:{worker}")
    factory = RequestFactory(rng)
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < stop_at:
            if pause.is_set():
                with findings.lock:
                    findings.paused += 1
                while pause.is_set():
                    time.sleep(0.01)
                with findings.lock:
                    findings.paused -= 1
            method = rng.choice(methods)
            endless = _endless(method)
            if method.client_streaming:
                messages, kind = _stream_requests(factory, method, rng)
                data = b"".join(messages)
            else:
                kind, data = factory.request(method)
                messages = [data]
            if not method.may_name_protected and PROTECTED_MARK in data:
                continue
            with findings.lock:
                findings.requests += 1
                findings.by_kind[kind] += 1
            try:
                _call(channel, method, messages, data, findings)
            except grpc.RpcError as error:
                _classify(findings, method, kind, error, endless, data, seed)


def _call(channel: grpc.Channel, method: Method, messages: list[bytes], data: bytes,
          findings: Findings) -> None:
    if method.client_streaming:
        topics = []
        if method.name == "ProduceStream":
            topics = [produce_pb2.ProduceRequest.FromString(m).topic for m in messages]
        deadline = STREAM_DEADLINE_S if _endless(method) else UNARY_DEADLINE_S
        call = channel.stream_stream(method.path)(iter(messages), timeout=deadline)
        try:
            for response in call:
                if topics:
                    _count_produce(findings, topics, response, stream=True)
        finally:
            call.cancel()
        return
    if method.server_streaming:
        call = channel.unary_stream(method.path)(data, timeout=STREAM_DEADLINE_S)
        try:
            for _ in call:
                pass
        finally:
            call.cancel()
        return
    response = channel.unary_unary(method.path)(data, timeout=UNARY_DEADLINE_S)
    if method.name == "Produce":
        topic = produce_pb2.ProduceRequest.FromString(data).topic
        _count_produce(findings, [topic], response, stream=False)


@dataclass
class GoodClient:
    """Produces one record and reads it back, over and over, on its own topic."""

    address: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as channel:
            produce = produce_pb2_grpc.ProduceServiceStub(channel)
            fetch = fetch_pb2_grpc.FetchServiceStub(channel)
            n = 0
            while not stop.is_set():
                value = b"good-%d" % n
                started = time.perf_counter()
                try:
                    reply = produce.Produce(
                        produce_pb2.ProduceRequest(
                            topic="good", partition=0,
                            records=produce_pb2.RecordList(
                                records=[common_pb2.Record(value=value)]
                            ),
                        ),
                        timeout=10,
                    )
                    offset = reply.results[0].base_offset
                    got = fetch.Fetch(fetch_pb2.FetchRequest(
                        topic="good", partition=0, offset=offset, decoded=True, max_records=1
                    ), timeout=10)
                    if got.records[0].value != value or got.records[0].offset != offset:
                        self.failures.append(f"read back {got.records[0]} for {value!r}")
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                self.latencies_s.append(time.perf_counter() - started)
                self.ok += 1
                n += 1


def _log_end_offsets(address: str) -> dict[tuple[str, int], int]:
    ends = {}
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for topic in PROTECTED_TOPICS:
            reply = admin.ListOffsets(admin_pb2.ListOffsetsRequest(
                topic=topic, spec=common_pb2.OffsetSpec(kind=common_pb2.OffsetSpec.LATEST)
            ), timeout=10)
            for p in reply.offsets:
                ends[(topic, p.partition)] = p.high_watermark
    return ends


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", env=ENV)
    process.start()
    with grpc.insecure_channel(process.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for topic in (*PROTECTED_TOPICS, "good"):
            admin.CreateTopic(admin_pb2.CreateTopicRequest(
                name=topic, partitions=PROTECTED_PARTITIONS
            ))
    yield process
    process.stop()


def test_fuzzed_requests_never_crash_hang_or_store(server: ServerProcess) -> None:
    seed, _ = make_rng("grpc-fuzz")
    methods = all_methods()
    assert {m.service for m in methods} >= {
        "moldau.v1.AdminService", "moldau.v1.ProduceService", "moldau.v1.FetchService",
        "moldau.v1.GroupService", "moldau.v1.EventStoreService", "moldau.v1.AclService",
    }
    findings = Findings()
    good = GoodClient(server.address)
    stop_good = threading.Event()
    pause = threading.Event()
    good_thread = threading.Thread(target=good.run, args=(stop_good,), daemon=True)
    good_thread.start()
    started = time.monotonic()
    stop_at = started + SCALE.fuzz_seconds
    checkpoints = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [
            pool.submit(_fuzz_worker, server.address, methods, seed, worker, stop_at, findings,
                        pause)
            for worker in range(WORKERS)
        ]
        try:
            while time.monotonic() < stop_at:
                time.sleep(min(10.0, max(0.0, stop_at - time.monotonic())))
                # a checkpoint: quiesce the workers; offsets must match what was acknowledged
                pause.set()
                quiet_by = time.monotonic() + 3 * UNARY_DEADLINE_S
                while findings.paused < sum(not f.done() for f in futures):
                    assert time.monotonic() < quiet_by, "fuzz workers did not pause"
                    time.sleep(0.01)
                _assert_nothing_stored_unacknowledged(server.address, findings, seed)
                checkpoints += 1
                pause.clear()
        finally:
            pause.clear()
            for future in futures:
                future.result()
    stop_good.set()
    good_thread.join(30)
    elapsed = time.monotonic() - started
    assert server.process is not None
    assert server.process.poll() is None, f"server died:\n{server.log_text()[-3000:]}"
    _assert_nothing_stored_unacknowledged(server.address, findings, seed)
    latencies = sorted(good.latencies_s)
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    summary = (
        f"MOLDAU_SEED={seed} mode={MODE}: {findings.requests} requests in {elapsed:.0f} s "
        f"({dict(findings.by_kind)}), methods={len(methods)}, codes={dict(findings.codes)}, "
        f"undecodable={findings.undecodable}, checkpoints={checkpoints}, "
        f"good client ops={good.ok} p99={p99 * 1000:.1f} ms"
    )
    print(summary, file=sys.stderr)
    assert not findings.bugs, summary + "\n" + "\n".join(findings.bugs)
    assert not good.failures, summary + "\n" + "\n".join(good.failures[:10])
    assert findings.requests >= SCALE.fuzz_min_requests, summary
    assert good.ok > 0, summary


def _assert_nothing_stored_unacknowledged(address: str, findings: Findings, seed: int) -> None:
    ends = _log_end_offsets(address)
    with findings.lock:
        expected = {key: findings.accepted.get(key, 0) for key in ends}
    assert ends == expected, (
        f"MOLDAU_SEED={seed}: log end offsets {ends} but the server acknowledged {expected}: "
        "a rejected request stored records (or an acknowledgement was lost)"
    )


_UNDECODABLE = b"\xff\xff\xff\xff"  # field 31, wire type 7: no valid protobuf message


def test_undecodable_body_is_invalid_argument(server: ServerProcess) -> None:
    """A body that is not the method's message is bad input: INVALID_ARGUMENT, with a hint."""
    with grpc.insecure_channel(server.address) as channel:
        codes = {}
        unary = channel.unary_unary("/moldau.v1.AdminService/ListTopics")
        stream = channel.stream_stream("/moldau.v1.ProduceService/ProduceStream")
        for name, call in (
            ("unary", lambda: unary(_UNDECODABLE, timeout=5)),
            ("stream", lambda: list(stream(iter([_UNDECODABLE]), timeout=5))),
        ):
            try:
                call()
            except grpc.RpcError as error:
                codes[name] = (error.code(), error.details())
        listed = unary(b"", timeout=5)  # the same connection keeps working afterwards
    assert all(code == _S.INVALID_ARGUMENT for code, _ in codes.values()), codes
    assert len(codes) == 2
    assert "AdminService/ListTopics is not a valid ListTopicsRequest" in codes["unary"][1]
    assert "ProduceService/ProduceStream is not a valid ProduceRequest" in codes["stream"][1]
    assert isinstance(listed, bytes)
