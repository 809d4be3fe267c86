"""The Prometheus endpoint of a real server: partition, fsync, group and RPC metrics."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moldau.v1 import (
    admin_pb2,
    common_pb2,
    exchanges_pb2,
    exchanges_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    produce_pb2,
    queues_pb2,
    queues_pb2_grpc,
)
from tests.integration.support import StartServer, make_stubs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_follow_produce_fetch_groups_and_errors(start_server: StartServer) -> None:
    port = _free_port()
    server = start_server(extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    with grpc.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        groups = groups_pb2_grpc.GroupServiceStub(channel)
        stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="orders", partitions=2))
        for _ in range(3):
            stubs.produce.Produce(produce_pb2.ProduceRequest(
                topic="orders", partition=1,
                records=produce_pb2.RecordList(records=[common_pb2.Record(value=b"x" * 50)] * 10),
            ))
        with pytest.raises(grpc.RpcError):
            stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="missing"))
        groups.CommitOffsets(groups_pb2.CommitOffsetsRequest(
            group="billing", member_id="", generation=-1,
            offsets=[groups_pb2.OffsetCommit(topic="orders", partition=1, offset=12)],
        ))
        # per-queue and per-exchange metrics have series only once one exists
        queues_pb2_grpc.QueueServiceStub(channel).DeclareQueue(queues_pb2.DeclareQueueRequest(
            config=queues_pb2.QueueConfig(name="orders-q", topic="orders")))
        exchanges_pb2_grpc.ExchangeServiceStub(channel).DeclareExchange(
            exchanges_pb2.DeclareExchangeRequest(name="orders-ex",
                                                 type=exchanges_pb2.EXCHANGE_TYPE_FANOUT))

    samples = _scrape(port)
    p1 = (("partition", "1"), ("topic", "orders"))
    assert samples[("moldau_partition_records_in_total", p1)] == 30
    assert samples[("moldau_partition_high_watermark", p1)] == 30
    assert samples[("moldau_partition_records_in_total",
                    (("partition", "0"), ("topic", "orders")))] == 0
    assert samples[("moldau_partition_bytes_in_total", p1)] > 30 * 50
    assert samples[("moldau_fsync_duration_seconds_count", ())] >= 3  # fsync before each ack
    lag_key = (("group", "billing"), ("partition", "1"), ("topic", "orders"))
    assert samples[("moldau_group_lag_records", lag_key)] == 18
    assert samples[("moldau_group_lag_seconds", lag_key)] >= 0
    produce_ok = (("code", "OK"), ("method", "ProduceService/Produce"))
    assert samples[("moldau_rpc_total", produce_ok)] == 3
    missing = (("code", "NOT_FOUND"), ("method", "AdminService/DescribeTopic"))
    assert samples[("moldau_rpc_total", missing)] == 1
    assert samples[("moldau_rpc_duration_seconds_count",
                    (("method", "ProduceService/Produce"),))] == 3
    assert samples[("moldau_disk_free_bytes", ())] > 0
    assert samples[("moldau_topics", ())] >= 2  # orders and __consumer_offsets

    # every metric the docs and the Grafana dashboard name exists
    names = {name for name, _ in samples}
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "metrics.md").read_text() + (docs / "grafana-dashboard.json").read_text()
    documented = set(re.findall(r"moldau_[a-z_]+[a-z]", text))
    assert documented
    missing = [d for d in documented if not any(n.startswith(d) for n in names)]
    assert missing == []


def test_a_taken_metrics_port_does_not_stop_the_broker(start_server: StartServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
        with grpc.insecure_channel(server.address) as channel:
            make_stubs(channel).admin.ListTopics(admin_pb2.ListTopicsRequest())


def test_refused_calls_are_counted(start_server: StartServer, tmp_path: Path) -> None:
    """Calls the auth layer refuses never reach a servicer; they are still counted by code."""
    from grpc_api.auth import hash_token

    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tokens]\nops = "{hash_token("s3cret")}"\n')
    port = _free_port()
    server = start_server(
        env={"MOLDAU_AUTH_TOKENS_FILE": str(tokens), "MOLDAU_ALLOW_ANONYMOUS": "false"},
        extra_args=["--metrics-listen", f"127.0.0.1:{port}"],
    )
    with grpc.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as refused:
                stubs.admin.ListTopics(admin_pb2.ListTopicsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    samples = _scrape(port)
    labels = (("code", "UNAUTHENTICATED"), ("method", "AdminService/ListTopics"))
    assert samples[("moldau_rpc_total", labels)] == 2
    assert ("moldau_rpc_duration_seconds_count", (("method", "AdminService/ListTopics"),)) \
        not in samples  # a refusal has no servicer latency
