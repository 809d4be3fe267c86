"""Broker limits (topics, partitions, client connections) and request ids in logs and errors,
over a real server process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2, admin_pb2_grpc, fetch_pb2, fetch_pb2_grpc

_S = grpc.StatusCode


def _create(stub: admin_pb2_grpc.AdminServiceStub, name: str, partitions: int) -> None:
    stub.CreateTopic(admin_pb2.CreateTopicRequest(name=name, partitions=partitions), timeout=10)


def test_topic_and_partition_limits(tmp_path: Path) -> None:
    env = {"MOLDAU_MAX_TOPICS": "3", "MOLDAU_MAX_PARTITIONS": "6",
           "MOLDAU_MAX_PARTITIONS_PER_TOPIC": "4"}
    with ServerProcess(tmp_path / "data", env=env) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as too_wide:
            _create(stub, "wide", 5)
        assert too_wide.value.code() == _S.INVALID_ARGUMENT
        assert "between 1 and 4" in str(too_wide.value.details())
        _create(stub, "a", 4)
        with pytest.raises(grpc.RpcError) as over_partitions:
            _create(stub, "b", 3)
        assert over_partitions.value.code() == _S.RESOURCE_EXHAUSTED
        assert "maximum of 6" in str(over_partitions.value.details())
        _create(stub, "b", 2)
        with pytest.raises(grpc.RpcError) as over_topics:
            _create(stub, "c", 1)
        # 3 topics are allowed, but 'a' + 'b' already hold all 6 partitions
        assert over_topics.value.code() == _S.RESOURCE_EXHAUSTED
        stub.DeleteTopic(admin_pb2.DeleteTopicRequest(name="b"), timeout=10)
        _create(stub, "c", 1)
        _create(stub, "d", 1)
        with pytest.raises(grpc.RpcError) as fourth:
            _create(stub, "e", 1)
        assert fourth.value.code() == _S.RESOURCE_EXHAUSTED
        assert "maximum of 3 topics" in str(fourth.value.details())
        names = {t.name for t in stub.ListTopics(admin_pb2.ListTopicsRequest(), timeout=10).topics}
        assert names == {"a", "c", "d"}  # nothing half-created by a refused request


def test_limits_are_checked_at_start(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"MOLDAU_MAX_PARTITIONS_PER_TOPIC": "10",
                                                  "MOLDAU_MAX_PARTITIONS": "5"})
    with pytest.raises(RuntimeError):
        server.start()
    assert "max_partitions_per_topic (10) must not exceed max_partitions (5)" in server.log_text()


def _subscribe_until(channel: grpc.Channel, done: threading.Event) -> Any:
    """A Subscribe stream that stays in progress (waiting for data on an empty topic)."""
    stub = fetch_pb2_grpc.FetchServiceStub(channel)
    start = fetch_pb2.SubscribeStart(topic="idle", partition=0, credit_bytes=1 << 20)

    def requests() -> Iterator[fetch_pb2.SubscribeRequest]:
        yield fetch_pb2.SubscribeRequest(start=start)
        done.wait(60)  # keep the request side open until the test is done

    return stub.Subscribe(requests(), timeout=60)


def test_connection_limit_refuses_one_more_busy_connection(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", env={"MOLDAU_MAX_CONNECTIONS": "2"}) as server:
        with grpc.insecure_channel(server.address) as admin_channel:
            _create(admin_pb2_grpc.AdminServiceStub(admin_channel), "idle", 1)
        options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
        channels = [grpc.insecure_channel(server.address, options=options) for _ in range(3)]
        done = threading.Event()
        try:
            busy = [_subscribe_until(c, done) for c in channels[:2]]
            deadline = time.monotonic() + 10
            refused = None
            while time.monotonic() < deadline:  # until both streams are in progress
                stub = admin_pb2_grpc.AdminServiceStub(channels[2])
                try:
                    stub.ListTopics(admin_pb2.ListTopicsRequest(), timeout=5)
                except grpc.RpcError as exc:
                    refused = exc
                    break
                time.sleep(0.05)
            assert refused is not None, "a third busy connection was never refused"
            assert refused.code() == _S.RESOURCE_EXHAUSTED
            assert "at most 2 client connections" in str(refused.details())
            # a connection that already has a call in progress may open more
            same = admin_pb2_grpc.AdminServiceStub(channels[0])
            assert same.ListTopics(admin_pb2.ListTopicsRequest(), timeout=5) is not None
            for call in busy:
                call.cancel()
            deadline = time.monotonic() + 10
            while True:  # the slots come back once the streams end
                try:
                    stub.ListTopics(admin_pb2.ListTopicsRequest(), timeout=5)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "slots did not come back"
                    time.sleep(0.05)
        finally:
            done.set()
            for channel in channels:
                channel.close()


def test_request_id_in_error_and_json_log(tmp_path: Path) -> None:
    args = ["--log-format", "json", "--log-level", "DEBUG"]
    with ServerProcess(tmp_path / "data", extra_args=args) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name="nope"), timeout=10,
                               metadata=(("x-request-id", "req-4711"),))
        trailing = dict(missing.value.trailing_metadata() or ())
        assert trailing["x-request-id"] == "req-4711"
        assert trailing["moldau-error"] == "UnknownTopicError"
        with pytest.raises(grpc.RpcError) as generated:
            stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name="nope"), timeout=10,
                               metadata=(("x-request-id", "x" * 65),))  # too long: replaced
        made_up = dict(generated.value.trailing_metadata() or ())["x-request-id"]
        assert len(made_up) == 16
        int(made_up, 16)
        log_text = server.log_text()
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert lines, log_text
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    calls = [line for line in lines if line["logger"] == "moldau.calls"]
    assert any(c["request_id"] == "req-4711" and "DescribeTopic" in c["message"] for c in calls)
    assert any(c["request_id"] == made_up for c in calls)
