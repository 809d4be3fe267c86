"""The server process: health, reflection, restarts, crashes and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.records.batch import decode_batches, encode_batch
from engine.records.record import NewRecord
from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, admin_pb2_grpc, fetch_pb2, fetch_pb2_grpc, produce_pb2
from tests.integration.support import StartServer, Stubs, make_stubs

SERVICES = {"moldau.v1.AdminService", "moldau.v1.ProduceService", "moldau.v1.FetchService"}


def test_health_reports_serving_for_the_server_and_each_service(stubs: Stubs) -> None:
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", *sorted(SERVICES)):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(stubs: Stubs) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(reflection.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert names >= SERVICES | {"grpc.health.v1.Health"}


def _produce_all(stubs: Stubs, topic: str, count: int) -> list[bytes]:
    values = [f"record-{i}".encode() for i in range(count)]
    for value in values:
        stubs.produce.Produce(
            produce_pb2.ProduceRequest(
                topic=topic, partition=0, record_batch=encode_batch([NewRecord(value)])
            )
        )
    return values


def _read_all(stubs: Stubs, topic: str) -> list[bytes | None]:
    values: list[bytes | None] = []
    offset = 0
    while True:
        reply = stubs.fetch.Fetch(
            fetch_pb2.FetchRequest(topic=topic, partition=0, offset=offset)
        )
        if not reply.record_batches:
            return values
        values += [r.value for r in decode_batches(reply.record_batches)]
        offset = reply.next_offset


def test_restart_keeps_topics_configs_and_data(start_server: StartServer, tmp_path: Path) -> None:
    first = start_server(tmp_path / "data")
    with grpc.insecure_channel(first.address) as channel:
        stubs = make_stubs(channel)
        stubs.admin.CreateTopic(
            admin_pb2.CreateTopicRequest(name="kept", partitions=2, configs={"flush.ms": "50"})
        )
        values = _produce_all(stubs, "kept", 20)
    assert first.stop() == 0
    assert "Traceback" not in first.log_text()

    second = start_server(tmp_path / "data")
    with grpc.insecure_channel(second.address) as channel:
        stubs = make_stubs(channel)
        topic = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="kept")).topic
        assert (topic.partition_count, dict(topic.overrides)) == (2, {"flush.ms": "50"})
        assert _read_all(stubs, "kept") == values
        more = _produce_all(stubs, "kept", 1)
        assert _read_all(stubs, "kept") == values + more


def test_kill_9_loses_nothing_acknowledged(start_server: StartServer, tmp_path: Path) -> None:
    first = start_server(tmp_path / "data")
    acked: dict[int, bytes] = {}
    with grpc.insecure_channel(first.address) as channel:
        stubs = make_stubs(channel)
        for name, durability in (("crash", "fsync"), ("crash-async", "async")):
            stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(
                name=name, partitions=1, configs={"durability": durability}))
        values = _produce_all(stubs, "crash", 20)  # each one acknowledged before the next
        requests = (
            produce_pb2.ProduceRequest(
                topic="crash-async", partition=0, correlation_id=i,
                record_batch=encode_batch([NewRecord(f"streamed-{i}".encode())]),
            )
            for i in range(100_000)
        )
        acks = stubs.produce.ProduceStream(requests)
        for ack in acks:  # kill -9 while the stream is still producing
            acked[ack.response.results[0].base_offset] = f"streamed-{ack.correlation_id}".encode()
            if len(acked) == 300:
                assert first.kill() == -signal.SIGKILL
                break
        acks.cancel()

    second = start_server(tmp_path / "data")
    with grpc.insecure_channel(second.address) as channel:
        stubs = make_stubs(channel)
        assert _read_all(stubs, "crash") == values
        reply = stubs.fetch.Fetch(fetch_pb2.FetchRequest(
            topic="crash-async", partition=0, offset=0, decoded=True, max_records=1000))
        stored = {r.offset: r.value for r in reply.records}
        assert {offset: stored.get(offset) for offset in acked} == acked


def test_sigterm_finishes_calls_ends_subscriptions_and_reports_not_serving(
    start_server: StartServer,
) -> None:
    server = start_server()
    process = server.process
    assert process is not None

    async def scenario() -> tuple[list[int], fetch_pb2.FetchResponse, grpc.StatusCode | None]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
                admin_pb2.CreateTopicRequest(name="t", partitions=1)
            )
            fetch = fetch_pb2_grpc.FetchServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = [(await watch.read()).status]
            start = fetch_pb2.SubscribeStart(topic="t", partition=0, offset=0, credit_bytes=1000)
            subscribe = fetch.Subscribe(_forever(fetch_pb2.SubscribeRequest(start=start)))
            await subscribe.read()
            long_poll = fetch.Fetch(
                fetch_pb2.FetchRequest(topic="t", partition=0, offset=0, max_wait_ms=20_000)
            )
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            statuses.append((await asyncio.wait_for(watch.read(), 10)).status)
            polled = await asyncio.wait_for(long_poll, 10)  # finished, not cancelled
            code = None
            try:
                await asyncio.wait_for(subscribe.read(), 10)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            watch.cancel()
            return statuses, polled, code

    statuses, polled, code = asyncio.run(scenario())
    assert process.wait(30) == 0  # the SIGTERM above: a clean exit
    serving = health_pb2.HealthCheckResponse
    assert statuses == [serving.SERVING, serving.NOT_SERVING]
    assert (polled.record_batches, polled.next_offset) == (b"", 0)
    assert code == grpc.StatusCode.UNAVAILABLE


async def _forever(
    first: fetch_pb2.SubscribeRequest,
) -> AsyncIterator[fetch_pb2.SubscribeRequest]:
    yield first
    await asyncio.Event().wait()


def test_second_server_on_the_same_data_dir_exits(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_api", "--listen", "127.0.0.1:0",
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert "in use by another broker" in result.stderr


def test_port_in_use_exits(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_api", "--listen", server.address,
         "--data-dir", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_bad_config_exits_with_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "moldau.toml"
    config.write_text("max_wait_ms = 'forever'\n")
    result = subprocess.run(
        [sys.executable, "-m", "grpc_api", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "max_wait_ms must be an integer" in result.stderr
