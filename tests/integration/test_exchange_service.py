"""ExchangeService over a real server: topic, headers, direct and fanout routing, alternate
topics, bad input, and exactly-once routing across a SIGKILL of the server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moldau.v1 import (
    admin_pb2,
    common_pb2,
    exchanges_pb2,
    exchanges_pb2_grpc,
    fetch_pb2,
    produce_pb2,
    queues_pb2,
    queues_pb2_grpc,
)
from tests.integration.support import StartServer, Stubs, make_stubs

X = exchanges_pb2
_S = grpc.StatusCode
_H = common_pb2.Header


@pytest.fixture(scope="module")
def exchanges(stubs: Stubs) -> exchanges_pb2_grpc.ExchangeServiceStub:
    return exchanges_pb2_grpc.ExchangeServiceStub(stubs.channel)


def publish(stubs: Stubs, topic: str, records: list[tuple[str, list[Any]]]) -> None:
    """(routing key, extra headers) per record; the value is the routing key."""
    stubs.produce.Produce(produce_pb2.ProduceRequest(topic=topic, records=produce_pb2.RecordList(
        records=[common_pb2.Record(value=key.encode(),
                                   headers=[_H(key="routing-key", value=key.encode()), *extra])
                 for key, extra in records])))


def contents(stubs: Stubs, topic: str) -> list[bytes]:
    """Every record value of every partition of ``topic``, partition by partition."""
    values: list[bytes] = []
    described = stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic))
    for partition in range(described.topic.partition_count):
        offset = 0
        while True:
            reply = stubs.fetch.Fetch(fetch_pb2.FetchRequest(
                topic=topic, partition=partition, offset=offset, decoded=True,
                max_records=1000))
            values += [r.value for r in reply.records]
            if reply.next_offset >= reply.high_watermark:
                break
            offset = reply.next_offset
    return values


def routed(exchanges: Any, name: str, timeout_s: float = 20.0) -> X.DescribeExchangeResponse:
    """Wait until the router caught up with exchange ``name``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: X.DescribeExchangeResponse = exchanges.DescribeExchange(
            X.DescribeExchangeRequest(name=name))
        if status.summary.lag == 0 or time.monotonic() > deadline:
            assert status.summary.lag == 0, status
            return status
        time.sleep(0.02)


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def bind(exchanges: Any, exchange: str, destination: str, **fields: Any) -> X.BindResponse:
    reply: X.BindResponse = exchanges.Bind(X.BindRequest(binding=X.Binding(
        exchange=exchange, destination=destination, **fields)))
    return reply


def test_topic_exchange_routes_by_star_and_hash(
    stubs: Stubs, exchanges: Any, new_topic: Callable[..., str]
) -> None:
    one, deep, eu, everything = (new_topic() for _ in range(4))
    name = f"{one}-ex"
    declared = exchanges.DeclareExchange(X.DeclareExchangeRequest(
        name=name, type=X.EXCHANGE_TYPE_TOPIC, partitions=2))
    assert declared.created
    assert declared.exchange.partitions == 2
    assert bind(exchanges, name, one, pattern="order.*").created
    assert not bind(exchanges, name, one, pattern="order.*").created  # idempotent
    bind(exchanges, name, deep, pattern="order.#.paid")
    bind(exchanges, name, eu, pattern="*.eu.#")
    bind(exchanges, name, everything, pattern="#")
    keys = ["order.created", "order.eu.paid", "order.paid", "order", "x.eu", "x.eu.a.b",
            "order.a.b.c", ""]
    publish(stubs, name, [(k, []) for k in keys])
    status = routed(exchanges, name)
    assert sorted(contents(stubs, one)) == [b"order.created", b"order.paid"]
    assert sorted(contents(stubs, deep)) == [b"order.eu.paid", b"order.paid"]
    assert sorted(contents(stubs, eu)) == [b"order.eu.paid", b"x.eu", b"x.eu.a.b"]
    assert sorted(contents(stubs, everything)) == sorted(k.encode() for k in keys)
    assert (status.summary.routed, status.summary.unroutable) == (len(keys), 0)
    assert len(status.bindings) == 4
    assert [p.partition for p in status.partitions] == [0, 1]
    listed = exchanges.ListBindings(X.ListBindingsRequest(exchange=name, destination=one))
    assert [b.pattern for b in listed.bindings] == ["order.*"]
    assert exchanges.Unbind(X.UnbindRequest(binding=X.Binding(
        exchange=name, destination=one, pattern="order.*"))).removed
    publish(stubs, name, [("order.late", [])])
    routed(exchanges, name)
    assert b"order.late" not in contents(stubs, one)


def test_headers_exchange_matches_all_or_any(
    stubs: Stubs, exchanges: Any, new_topic: Callable[..., str]
) -> None:
    all_of, any_of, present = new_topic(), new_topic(), new_topic()
    name = f"{all_of}-hx"
    exchanges.DeclareExchange(X.DeclareExchangeRequest(name=name, type=X.EXCHANGE_TYPE_HEADERS))
    bind(exchanges, name, all_of, match=X.HEADERS_MATCH_ALL,
         arguments=[_H(key="format", value=b"pdf"), _H(key="type", value=b"report")])
    bind(exchanges, name, any_of, match=X.HEADERS_MATCH_ANY,
         arguments=[_H(key="format", value=b"pdf"), _H(key="type", value=b"log")])
    bind(exchanges, name, present, arguments=[_H(key="urgent")])  # present, any value
    publish(stubs, name, [
        ("pdf-report", [_H(key="format", value=b"pdf"), _H(key="type", value=b"report")]),
        ("pdf-only", [_H(key="format", value=b"pdf")]),
        ("log", [_H(key="type", value=b"log"), _H(key="urgent", value=b"")]),
        ("none", [_H(key="format", value=b"zip")]),
    ])
    status = routed(exchanges, name)
    assert contents(stubs, all_of) == [b"pdf-report"]
    assert sorted(contents(stubs, any_of)) == [b"log", b"pdf-only", b"pdf-report"]
    assert contents(stubs, present) == [b"log"]
    assert (status.summary.routed, status.summary.unroutable) == (3, 1)


def test_fanout_and_direct_with_an_alternate_topic(
    stubs: Stubs, exchanges: Any, new_topic: Callable[..., str]
) -> None:
    a, b, direct_dest, alternate = (new_topic() for _ in range(4))
    fan = f"{a}-fan"
    exchanges.DeclareExchange(X.DeclareExchangeRequest(name=fan, type=X.EXCHANGE_TYPE_FANOUT))
    bind(exchanges, fan, a)
    bind(exchanges, fan, b)
    publish(stubs, fan, [("k1", []), ("k2", [])])
    routed(exchanges, fan)
    assert contents(stubs, a) == contents(stubs, b) == [b"k1", b"k2"]

    direct = f"{a}-direct"
    declared = exchanges.DeclareExchange(X.DeclareExchangeRequest(
        name=direct, type=X.EXCHANGE_TYPE_DIRECT, alternate=alternate, provenance=True))
    assert declared.exchange.alternate == alternate
    bind(exchanges, direct, direct_dest, pattern="ship")
    publish(stubs, direct, [("ship", []), ("ship.eu", []), ("bill", [])])
    status = routed(exchanges, direct)
    assert contents(stubs, direct_dest) == [b"ship"]
    assert contents(stubs, alternate) == [b"ship.eu", b"bill"]
    assert (status.summary.routed, status.summary.unroutable) == (1, 2)
    record = stubs.fetch.Fetch(fetch_pb2.FetchRequest(topic=direct_dest, decoded=True)).records[0]
    assert {h.key: h.value for h in record.headers}["x-exchange"] == direct.encode()
    summaries = {s.exchange.name: s for s in
                 exchanges.ListExchanges(X.ListExchangesRequest()).exchanges}
    assert summaries[fan].bindings == 2
    assert summaries[direct].unroutable == 2


def test_bad_input_is_explained(stubs: Stubs, exchanges: Any,
                                new_topic: Callable[..., str]) -> None:
    dest = new_topic()
    name = f"{dest}-bad"
    code, message = error_of(lambda: exchanges.DeclareExchange(
        X.DeclareExchangeRequest(name=name)))
    assert code == _S.INVALID_ARGUMENT
    assert "exchange type" in message
    exchanges.DeclareExchange(X.DeclareExchangeRequest(name=name, type=X.EXCHANGE_TYPE_FANOUT))
    code, message = error_of(lambda: exchanges.DeclareExchange(
        X.DeclareExchangeRequest(name=name, type=X.EXCHANGE_TYPE_TOPIC)))
    assert code == _S.ALREADY_EXISTS
    code, message = error_of(lambda: exchanges.DeclareExchange(X.DeclareExchangeRequest(
        name=f"{name}2", type=X.EXCHANGE_TYPE_TOPIC, alternate="no-such-topic")))
    assert code == _S.NOT_FOUND
    assert "no-such-topic" in message
    code, message = error_of(lambda: bind(exchanges, name, dest, pattern="a.b"))
    assert code == _S.INVALID_ARGUMENT
    assert "without a pattern" in message
    code, message = error_of(lambda: bind(exchanges, "no-such-exchange", dest))
    assert code == _S.NOT_FOUND
    assert "declare it first" in message
    code, message = error_of(lambda: bind(exchanges, name, "no-such-destination"))
    assert code == _S.NOT_FOUND
    code, message = error_of(lambda: bind(exchanges, name, name))
    assert code == _S.INVALID_ARGUMENT
    assert "loop" in message
    code, message = error_of(lambda: bind(exchanges, name, dest, arguments=[
        _H(key="a"), _H(key="a")]))
    assert code == _S.INVALID_ARGUMENT
    assert "twice" in message
    code, _ = error_of(lambda: exchanges.DescribeExchange(
        X.DescribeExchangeRequest(name="no-such-exchange")))
    assert code == _S.NOT_FOUND
    exchanges.DeleteExchange(X.DeleteExchangeRequest(name=name))
    code, _ = error_of(lambda: exchanges.DeleteExchange(X.DeleteExchangeRequest(name=name)))
    assert code == _S.NOT_FOUND


def test_no_loss_and_no_duplicate_across_a_kill_9_during_routing(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Publish while the router routes, SIGKILL the server, restart: each destination holds
    exactly the matching records of the exchange topic, once each."""
    data = tmp_path / "routing"
    process = start_server(data_dir=data)
    total = 200_000
    keys = [f"{'eu' if i % 2 else 'us'}.order.{'paid' if i % 3 == 0 else 'new'}.{i}"
            for i in range(total)]
    published = [0]

    def publisher(stubs: Stubs) -> None:
        with contextlib.suppress(grpc.RpcError):  # the server is killed under it
            for begin in range(0, total, 1000):
                publish(stubs, "events", [(k, []) for k in keys[begin:begin + 1000]])
                published[0] = begin + 1000

    with grpc.insecure_channel(process.address) as channel:
        stubs = make_stubs(channel)
        ex = exchanges_pb2_grpc.ExchangeServiceStub(channel)
        for topic in ("eu", "all", "paid"):
            stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=2))
        ex.DeclareExchange(X.DeclareExchangeRequest(name="events", type=X.EXCHANGE_TYPE_TOPIC,
                                                    partitions=2))
        bind(ex, "events", "eu", pattern="eu.#")
        bind(ex, "events", "all", pattern="#")
        bind(ex, "events", "paid", pattern="*.*.paid.*")
        thread = threading.Thread(target=publisher, args=(stubs,))
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill while records arrive and are routed
            summary = ex.DescribeExchange(X.DescribeExchangeRequest(name="events")).summary
            if summary.routed >= 10_000:
                break
            time.sleep(0.01)
        process.kill()
        thread.join(timeout=30)
    assert summary.routed >= 10_000
    assert published[0] < total  # the kill came while publishing (and routing) went on
    restarted = start_server(data_dir=data)
    with grpc.insecure_channel(restarted.address) as channel:
        stubs = make_stubs(channel)
        ex = exchanges_pb2_grpc.ExchangeServiceStub(channel)
        status = routed(ex, "events", timeout_s=60)
        stored = sorted(contents(stubs, "events"))
        assert len(stored) >= published[0]  # acknowledged publishes survived
        assert status.summary.routed == len(stored)
        assert sorted(contents(stubs, "all")) == stored
        assert sorted(contents(stubs, "eu")) == [k for k in stored if k.startswith(b"eu.")]
        assert sorted(contents(stubs, "paid")) == [k for k in stored if b".paid." in k]


def test_queue_and_exchange_metrics(start_server: StartServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = start_server(extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    with grpc.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        ex = exchanges_pb2_grpc.ExchangeServiceStub(channel)
        queues = queues_pb2_grpc.QueueServiceStub(channel)
        stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="jobs", partitions=1))
        ex.DeclareExchange(X.DeclareExchangeRequest(name="in", type=X.EXCHANGE_TYPE_DIRECT))
        bind(ex, "in", "jobs", pattern="job")
        queues.DeclareQueue(queues_pb2.DeclareQueueRequest(config=queues_pb2.QueueConfig(
            name="work", topic="jobs", backoff=queues_pb2.Backoff(initial_ms=60_000))))
        publish(stubs, "in", [("job", []), ("job", []), ("job", []), ("other", [])])
        routed(ex, "in")
        got = queues.Receive(queues_pb2.ReceiveRequest(queue="work", max_records=3,
                                                       wait_ms=2000)).deliveries
        assert len(got) == 3
        queues.Ack(queues_pb2.AckRequest(queue="work", lease_ids=[got[0].lease_id]))
        queues.Nack(queues_pb2.NackRequest(queue="work", lease_ids=[got[1].lease_id]))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(reply.read().decode())
                   for s in family.samples}
    work, exchange = (("queue", "work"),), (("exchange", "in"),)
    assert samples[("moldau_queue_depth", work)] == 2
    assert samples[("moldau_queue_in_flight", work)] == 1
    assert samples[("moldau_queue_waiting_retry", work)] == 1
    assert samples[("moldau_queue_acked_total", work)] == 1
    assert samples[("moldau_queue_redelivered_total", work)] == 1
    assert samples[("moldau_queue_dead_lettered_total", work)] == 0
    assert samples[("moldau_exchange_routed_total", exchange)] == 3
    assert samples[("moldau_exchange_unroutable_total", exchange)] == 1
    assert samples[("moldau_exchange_lag_records", exchange)] == 0
