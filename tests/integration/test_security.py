"""TLS, authentication, ACL enforcement (the T12 matrix) and quotas, over real servers.

Three servers:

- ``tls``: TLS, bearer tokens, anonymous refused; the matrix principals admin (super user),
  producer (``orders.`` prefixed write), reader (``orders`` read, ``ledger/order-`` stream
  read), member (group ``billing`` + topic ``orders`` read), anonymous and a bad token;
- ``mtls``: client certificates required; ``mallory`` has a certificate and no ACL;
- ``plain``: plaintext, tokens, anonymous on ``auto`` (loopback: allowed), produce quota.

The matrix enumerates every service and method the server offers through reflection and fails
for a method without an expectation, so a new service must add its rules and its cases here.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import grpc_api.testing
from grpc_api.auth import hash_token
from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    common_pb2,
    eventstore_pb2,
    exchanges_pb2,
    fetch_pb2,
    groups_pb2,
    produce_pb2,
    queues_pb2,
    security_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
_S = grpc.StatusCode
TOKENS = {"admin": "t-admin", "producer": "t-producer", "reader": "t-reader",
          "member": "t-member", "q1": "t-q1", "q2": "t-q2"}
ENV = {"MOLDAU_LOG_LEVEL": "WARNING", "MOLDAU_SUPER_USERS": "User:admin"}


# ---------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ca")
    subprocess.run([str(ROOT / "scripts" / "make-test-ca.sh"), str(out), "mallory", "admin"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    path.write_text("[tokens]\n" + "".join(f'{name} = "{hash_token(token)}"\n'
                                           for name, token in TOKENS.items()))
    return path


def _start(data_dir: Path, env: dict[str, str]) -> ServerProcess:
    """Start a server; TLS ports cannot answer the plaintext health probe of ServerProcess, and
    the "serving on" line is printed only once health is SERVING, so that line is enough."""
    process = ServerProcess(data_dir, env={**ENV, **env})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpc_api.testing, "wait_for_serving", lambda *_args: None)
        process.start()
    return process


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, ca: Path, tokens_file: Path
               ) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("tls") / "data", {
        "MOLDAU_TLS_CERT_FILE": str(ca / "server.pem"),
        "MOLDAU_TLS_KEY_FILE": str(ca / "server.key"),
        "MOLDAU_AUTH_TOKENS_FILE": str(tokens_file),
        "MOLDAU_ALLOW_ANONYMOUS": "false",
    })
    yield process
    assert process.stop() == 0, process.log_text()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, ca: Path, tokens_file: Path
                ) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("mtls") / "data", {
        "MOLDAU_TLS_CERT_FILE": str(ca / "server.pem"),
        "MOLDAU_TLS_KEY_FILE": str(ca / "server.key"),
        "MOLDAU_TLS_CLIENT_CA_FILE": str(ca / "ca.pem"),
        "MOLDAU_AUTH_TOKENS_FILE": str(tokens_file),
    })
    yield process
    assert process.stop() == 0, process.log_text()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory, tokens_file: Path
                 ) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("plain") / "data", {
        "MOLDAU_AUTH_TOKENS_FILE": str(tokens_file),
        "MOLDAU_QUOTA_PRODUCE_BYTES_PER_SEC": str(1024 * 1024),
    })
    yield process
    assert process.stop() == 0, process.log_text()


def tls_channel(server: ServerProcess, ca: Path, cert: str | None = None) -> grpc.Channel:
    key_pair = {}
    if cert is not None:
        key_pair = {"private_key": (ca / f"client-{cert}.key").read_bytes(),
                    "certificate_chain": (ca / f"client-{cert}.pem").read_bytes()}
    credentials = grpc.ssl_channel_credentials((ca / "ca.pem").read_bytes(), **key_pair)
    return grpc.secure_channel(server.address, credentials)


def bearer(name: str | None) -> list[tuple[str, str]]:
    if name is None:
        return []
    return [("authorization", f"Bearer {TOKENS.get(name, 'not-a-token')}")]


# ---------------------------------------------------------------------------- generic calls


def method_descriptor(full_method: str) -> Any:
    service, _, name = full_method.lstrip("/").rpartition("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]


def invoke(channel: grpc.Channel, full_method: str, requests: list[Message],
           metadata: list[tuple[str, str]], timeout_s: float = 5.0, *,
           drain: bool = False) -> Any:
    """Call any method with these request(s); returns the status code (OK or an error).

    Streams: the requests are sent, then the first response is read and the call cancelled;
    with ``drain`` the client half-closes after the requests and reads every response, so a
    refusal of a later message is seen. DEADLINE_EXCEEDED means the call was admitted and
    waited (counted as admitted).
    """
    method = method_descriptor(full_method)
    output = GetMessageClass(method.output_type)
    kwargs = {"request_serializer": lambda m: m.SerializeToString(),
              "response_deserializer": output.FromString}
    pending = threading.Event()

    def request_stream() -> Iterator[Message]:
        yield from requests
        if not drain:
            pending.wait(timeout_s)  # keep the stream open until the first response arrived

    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(full_method, **kwargs)(requests[0], metadata=metadata,
                                                       timeout=timeout_s)
            return _S.OK
        if not method.client_streaming:
            responses = channel.unary_stream(full_method, **kwargs)(
                requests[0], metadata=metadata, timeout=timeout_s)
        elif not method.server_streaming:
            channel.stream_unary(full_method, **kwargs)(
                request_stream(), metadata=metadata, timeout=timeout_s)
            return _S.OK
        else:
            responses = channel.stream_stream(full_method, **kwargs)(
                request_stream(), metadata=metadata, timeout=timeout_s)
        try:
            if drain:
                for _ in responses:
                    pass
            else:
                next(responses)
        finally:
            pending.set()
            responses.cancel()
        return _S.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        pending.set()


# ---------------------------------------------------------------------------- the matrix

ADMIN, PRODUCER, READER, MEMBER = "admin", "producer", "reader", "member"
ANONYMOUS, BAD_TOKEN, MALLORY = "anonymous", "bad-token", "mallory-cert"
PRINCIPALS = (PRODUCER, READER, MEMBER, ANONYMOUS, BAD_TOKEN, MALLORY, ADMIN)  # admin last
AUTHENTICATED = frozenset({ADMIN, PRODUCER, READER, MEMBER, MALLORY})
EVERYONE = frozenset(PRINCIPALS)

SETUP_ACLS = [
    (f"User:{PRODUCER}", "topic", "prefixed", "orders.", "write"),
    (f"User:{READER}", "topic", "literal", "orders", "read"),
    (f"User:{READER}", "stream", "prefixed", "ledger/order-", "read"),
    (f"User:{MEMBER}", "group", "literal", "billing", "read"),
    (f"User:{MEMBER}", "topic", "literal", "orders", "read"),
]


@dataclass(frozen=True)
class Case:
    """Requests for one method and who gets past authorisation with them."""

    requests: Callable[[], list[Message]]
    admitted: frozenset[str]
    drain: bool = False


def one(message: Message) -> Callable[[], list[Message]]:
    return lambda: [message]


def _records(topic: str) -> produce_pb2.ProduceRequest:
    return produce_pb2.ProduceRequest(
        topic=topic, partition=0,
        records=produce_pb2.RecordList(records=[common_pb2.Record(value=b"v")]))


def _admitted(*names: str) -> frozenset[str]:
    return frozenset(names)


_A = _admitted
G = groups_pb2
E = eventstore_pb2
_ORDERS_TP = G.TopicPartition(topic="orders", partition=0)
_RESET = {"group": "billing", "topics": ["orders"], "to_earliest": True}

CASES: dict[str, list[Case]] = {
    "/moldau.v1.AdminService/CreateTopic": [
        Case(one(admin_pb2.CreateTopicRequest(name="orders.created", partitions=1)), _A(ADMIN))],
    "/moldau.v1.AdminService/DeleteTopic": [
        Case(one(admin_pb2.DeleteTopicRequest(name="orders.doomed")), _A(ADMIN))],
    "/moldau.v1.AdminService/ListTopics": [
        Case(one(admin_pb2.ListTopicsRequest()), AUTHENTICATED)],
    "/moldau.v1.AdminService/DescribeTopic": [
        Case(one(admin_pb2.DescribeTopicRequest(name="orders.eu")), _A(ADMIN, PRODUCER)),
        Case(one(admin_pb2.DescribeTopicRequest(name="orders")), _A(ADMIN, READER, MEMBER)),
        Case(one(admin_pb2.DescribeTopicRequest(name="orders2")), _A(ADMIN))],
    "/moldau.v1.AdminService/AlterTopicConfig": [
        Case(one(admin_pb2.AlterTopicConfigRequest(name="orders.eu",
                                                   set={"retention.ms": "3600000"})),
             _A(ADMIN))],
    "/moldau.v1.AdminService/ListOffsets": [
        Case(one(admin_pb2.ListOffsetsRequest(topic="orders")), _A(ADMIN, READER, MEMBER))],
    "/moldau.v1.ProduceService/Produce": [
        Case(one(_records("orders.eu")), _A(ADMIN, PRODUCER)),
        Case(one(_records("orders")), _A(ADMIN)),
        Case(one(_records("orders2")), _A(ADMIN))],
    "/moldau.v1.ProduceService/ProduceStream": [
        Case(one(_records("orders.eu")), _A(ADMIN, PRODUCER)),
        # every message is checked: an allowed topic first does not open the stream for others
        Case(lambda: [_records("orders.eu"), _records("orders")], _A(ADMIN), drain=True)],
    "/moldau.v1.FetchService/Fetch": [
        Case(one(fetch_pb2.FetchRequest(topic="orders")), _A(ADMIN, READER, MEMBER)),
        Case(one(fetch_pb2.FetchRequest(topic="orders2")), _A(ADMIN)),
        Case(one(fetch_pb2.FetchRequest(topic="orders.eu")), _A(ADMIN))],
    "/moldau.v1.FetchService/Subscribe": [
        Case(one(fetch_pb2.SubscribeRequest(start=fetch_pb2.SubscribeStart(
            topic="orders", offset=0, credit_bytes=1024))), _A(ADMIN, READER, MEMBER))],
    "/moldau.v1.GroupService/Subscribe": [
        Case(one(G.GroupSubscribeRequest(join=G.JoinGroup(group="billing", topics=["orders"]))),
             _A(ADMIN, MEMBER)),
        Case(one(G.GroupSubscribeRequest(join=G.JoinGroup(group="billing",
                                                          topics=["orders2"]))), _A(ADMIN))],
    "/moldau.v1.GroupService/CommitOffsets": [
        Case(one(G.CommitOffsetsRequest(group="billing", generation=-1, offsets=[
            G.OffsetCommit(topic="orders", partition=0, offset=0)])), _A(ADMIN, MEMBER))],
    "/moldau.v1.GroupService/FetchOffsets": [
        Case(one(G.FetchOffsetsRequest(group="billing")), _A(ADMIN, MEMBER))],
    "/moldau.v1.GroupService/ListGroups": [Case(one(G.ListGroupsRequest()), AUTHENTICATED)],
    "/moldau.v1.GroupService/DescribeGroup": [
        Case(one(G.DescribeGroupRequest(group="billing")), _A(ADMIN, MEMBER))],
    "/moldau.v1.GroupService/DeleteGroup": [
        Case(one(G.DeleteGroupRequest(group="billing")), _A(ADMIN))],
    "/moldau.v1.GroupService/DeleteOffsets": [
        Case(one(G.DeleteOffsetsRequest(group="billing", partitions=[_ORDERS_TP])), _A(ADMIN))],
    "/moldau.v1.GroupService/ResetOffsets": [
        Case(one(G.ResetOffsetsRequest(**_RESET)), _A(ADMIN, MEMBER)),  # a dry run: describe
        Case(one(G.ResetOffsetsRequest(**_RESET, execute=True)), _A(ADMIN))],
    "/moldau.v1.EventStoreService/CreateStoreTopic": [
        Case(one(E.CreateStoreTopicRequest(topic="ledger2", partitions=1)), _A(ADMIN))],
    "/moldau.v1.EventStoreService/AppendToStream": [
        Case(one(E.AppendToStreamRequest(topic="ledger", stream="order-1", special=1,
                                         events=[E.EventToAppend(type="t", data=b"{}")])),
             _A(ADMIN))],
    "/moldau.v1.EventStoreService/ReadStream": [
        Case(one(E.ReadStreamRequest(topic="ledger", stream="order-1")), _A(ADMIN, READER)),
        Case(one(E.ReadStreamRequest(topic="ledger", stream="invoice-1")), _A(ADMIN))],
    "/moldau.v1.EventStoreService/ReadAll": [
        Case(one(E.ReadAllRequest(topic="ledger", category="order")), _A(ADMIN, READER)),
        Case(one(E.ReadAllRequest(topic="ledger")), _A(ADMIN))],
    "/moldau.v1.EventStoreService/DeleteStream": [
        Case(one(E.DeleteStreamRequest(topic="ledger", stream="order-9", special=1)),
             _A(ADMIN))],
    "/moldau.v1.EventStoreService/TruncateStream": [
        Case(one(E.TruncateStreamRequest(topic="ledger", stream="order-1", before_version=0)),
             _A(ADMIN))],
    "/moldau.v1.EventStoreService/SaveSnapshot": [
        Case(one(E.SaveSnapshotRequest(topic="ledger", stream="order-1", version=0,
                                       state=b"s")), _A(ADMIN))],
    "/moldau.v1.EventStoreService/LoadSnapshot": [
        Case(one(E.LoadSnapshotRequest(topic="ledger", stream="order-1")), _A(ADMIN, READER))],
    "/moldau.v1.EventStoreService/Subscribe": [
        Case(one(E.SubscribeEventsRequest(topic="ledger", stream=E.StreamStart(
            stream="order-1"))), _A(ADMIN, READER)),
        Case(one(E.SubscribeEventsRequest(topic="ledger", all=E.AllStart())), _A(ADMIN))],
    "/moldau.v1.EventStoreService/AppendStream": [
        Case(one(E.AppendStreamRequest(appends=[E.PipelinedAppend(
            correlation_id=1, append=E.AppendToStreamRequest(
                topic="ledger", stream="order-1", special=1,
                events=[E.EventToAppend(type="t", data=b"{}")]))])), _A(ADMIN))],
    "/moldau.v1.EventStoreService/ListStreams": [
        Case(one(E.ListStreamsRequest(topic="ledger", category="order")), _A(ADMIN, READER)),
        Case(one(E.ListStreamsRequest(topic="ledger")), _A(ADMIN))],
    "/moldau.v1.AclService/CreateAcls": [
        Case(one(security_pb2.CreateAclsRequest(acls=[security_pb2.AclBinding(
            principal="User:nobody", resource_type="topic", resource_name="x",
            operation="read")])), _A(ADMIN))],
    "/moldau.v1.AclService/DeleteAcls": [
        Case(one(security_pb2.DeleteAclsRequest(filters=[security_pb2.AclFilter(
            principal="User:nobody")])), _A(ADMIN))],
    "/moldau.v1.AclService/ListAcls": [Case(one(security_pb2.ListAclsRequest()), _A(ADMIN))],
    "/moldau.v1.AclService/WhoAmI": [Case(one(security_pb2.WhoAmIRequest()), AUTHENTICATED)],
    # queues and exchanges: no ACL grants them to the matrix principals; the admin's calls
    # name nothing that exists, so they change nothing
    **{f"/moldau.v1.QueueService/{method}": [Case(one(request), _A(ADMIN))]
       for method, request in (
           ("DeclareQueue", queues_pb2.DeclareQueueRequest(config=queues_pb2.QueueConfig(
               name="jobs", topic="no-such-topic"))),
           ("DeleteQueue", queues_pb2.DeleteQueueRequest(name="jobs")),
           ("DescribeQueue", queues_pb2.DescribeQueueRequest(name="jobs")),
           ("Receive", queues_pb2.ReceiveRequest(queue="jobs")),
           ("Ack", queues_pb2.AckRequest(queue="jobs")),
           ("Nack", queues_pb2.NackRequest(queue="jobs")),
           ("ExtendLease", queues_pb2.ExtendLeaseRequest(queue="jobs", lease_ms=1)),
           ("Release", queues_pb2.ReleaseRequest(queue="jobs")),
           ("Consume", queues_pb2.ConsumeRequest(start=queues_pb2.ConsumeStart(queue="jobs"))),
           ("ListDeadLetters", queues_pb2.ListDeadLettersRequest(
               selection=queues_pb2.DeadLetterSelection(queue="jobs"))),
           ("Redrive", queues_pb2.RedriveRequest(
               selection=queues_pb2.DeadLetterSelection(dlq_topic="orders.dlq"))),
           ("ScheduleRetry", queues_pb2.ScheduleRetryRequest(queue="jobs")),
       )},
    "/moldau.v1.QueueService/ListQueues": [
        Case(one(queues_pb2.ListQueuesRequest()), AUTHENTICATED)],
    **{f"/moldau.v1.ExchangeService/{method}": [Case(one(request), _A(ADMIN))]
       for method, request in (
           ("DeclareExchange", exchanges_pb2.DeclareExchangeRequest(name="orders.ex")),
           ("DeleteExchange", exchanges_pb2.DeleteExchangeRequest(name="orders.ex")),
           ("DescribeExchange", exchanges_pb2.DescribeExchangeRequest(name="orders.ex")),
           ("Bind", exchanges_pb2.BindRequest(binding=exchanges_pb2.Binding(
               exchange="orders.ex", destination="orders"))),
           ("Unbind", exchanges_pb2.UnbindRequest(binding=exchanges_pb2.Binding(
               exchange="orders.ex", destination="orders"))),
           ("ListBindings", exchanges_pb2.ListBindingsRequest(exchange="orders.ex")),
       )},
    "/moldau.v1.ExchangeService/ListExchanges": [
        Case(one(exchanges_pb2.ListExchangesRequest()), AUTHENTICATED)],
    "/grpc.health.v1.Health/Check": [Case(one(health_pb2.HealthCheckRequest()), EVERYONE)],
    "/grpc.health.v1.Health/Watch": [Case(one(health_pb2.HealthCheckRequest()), EVERYONE)],
    "/grpc.health.v1.Health/List": [Case(one(health_pb2.HealthListRequest()), EVERYONE)],
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [
        Case(one(reflection_pb2.ServerReflectionRequest(list_services="")), AUTHENTICATED)],
}


def offered_methods(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> list[str]:
    """Every method of every service the server lists through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5))
    methods = []
    for service in reply.list_services_response.service:
        descriptor = descriptor_pool.Default().FindServiceByName(service.name)
        methods += [f"/{service.name}/{m.name}" for m in descriptor.methods]
    return sorted(methods)


def _setup(channel: grpc.Channel) -> None:
    """Topics, a store topic, a group with an offset, and the ACLs of the matrix."""
    admin = bearer(ADMIN)
    for name in ("orders", "orders2", "orders.eu", "orders.doomed"):
        channel.unary_unary("/moldau.v1.AdminService/CreateTopic",
                            request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=admin_pb2.CreateTopicResponse.FromString)(
            admin_pb2.CreateTopicRequest(name=name, partitions=1), metadata=admin)
    assert invoke(channel, "/moldau.v1.EventStoreService/CreateStoreTopic",
                  [E.CreateStoreTopicRequest(topic="ledger", partitions=1)], admin) == _S.OK
    acls = [security_pb2.AclBinding(principal=p, resource_type=t, pattern_type=pt,
                                    resource_name=n, operation=o)
            for p, t, pt, n, o in SETUP_ACLS]
    assert invoke(channel, "/moldau.v1.AclService/CreateAcls",
                  [security_pb2.CreateAclsRequest(acls=acls)], admin) == _S.OK


def test_authorisation_matrix(tls_server: ServerProcess, mtls_server: ServerProcess,
                              ca: Path) -> None:
    """T12: every RPC x every principal gets OK (admitted), UNAUTHENTICATED or
    PERMISSION_DENIED as expected; no method is left without an expectation."""
    with tls_channel(tls_server, ca) as channel, \
            tls_channel(mtls_server, ca, cert="mallory") as mallory_channel:
        offered = offered_methods(channel, bearer(ADMIN))
        missing = sorted(set(offered) - set(CASES))
        assert not missing, f"methods without an expectation in the matrix: {missing}"
        assert "/moldau.v1.AclService/WhoAmI" in offered  # reflection saw the new service
        _setup(channel)
        failures = []
        for principal in PRINCIPALS:
            for method in offered:
                for number, case in enumerate(CASES[method]):
                    if principal == MALLORY:
                        code = invoke(mallory_channel, method, case.requests(), [],
                                      drain=case.drain)
                    else:
                        token = None if principal == ANONYMOUS else principal
                        code = invoke(channel, method, case.requests(), bearer(token),
                                      drain=case.drain)
                    if principal in case.admitted:
                        ok = code not in (_S.UNAUTHENTICATED, _S.PERMISSION_DENIED)
                        expected = "admitted"
                    elif principal in (ANONYMOUS, BAD_TOKEN):
                        ok, expected = code == _S.UNAUTHENTICATED, "UNAUTHENTICATED"
                    else:
                        ok, expected = code == _S.PERMISSION_DENIED, "PERMISSION_DENIED"
                    if not ok:
                        failures.append(f"{principal} {method}[{number}]: {code}, "
                                        f"expected {expected}")
        assert not failures, "\n".join(failures)


def test_list_responses_are_filtered(tls_server: ServerProcess, ca: Path) -> None:
    with tls_channel(tls_server, ca) as channel:
        _create(channel, "filtered.visible", "filtered.hidden")
        grant = security_pb2.CreateAclsRequest(acls=[security_pb2.AclBinding(
            principal="User:reader", resource_type="topic", resource_name="filtered.visible",
            operation="describe")])
        assert invoke(channel, "/moldau.v1.AclService/CreateAcls", [grant],
                      bearer(ADMIN)) == _S.OK
        reply = channel.unary_unary(
            "/moldau.v1.AdminService/ListTopics",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=admin_pb2.ListTopicsResponse.FromString,
        )(admin_pb2.ListTopicsRequest(), metadata=bearer(READER))
        names = {t.name for t in reply.topics}
        assert "filtered.visible" in names
        assert "filtered.hidden" not in names


def _create(channel: grpc.Channel, *names: str) -> None:
    for name in names:
        code = invoke(channel, "/moldau.v1.AdminService/CreateTopic",
                      [admin_pb2.CreateTopicRequest(name=name, partitions=1)], bearer(ADMIN))
        assert code in (_S.OK, _S.ALREADY_EXISTS)


def test_refusals_name_principal_operation_and_resource(tls_server: ServerProcess, ca: Path
                                                        ) -> None:
    with tls_channel(tls_server, ca) as channel:
        stub = channel.unary_unary("/moldau.v1.AdminService/DeleteTopic",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=admin_pb2.DeleteTopicResponse.FromString)
        with pytest.raises(grpc.RpcError) as denied:
            stub(admin_pb2.DeleteTopicRequest(name="orders"), metadata=bearer(READER))
        assert denied.value.code() == _S.PERMISSION_DENIED
        assert "User:reader may not delete topic 'orders'" in denied.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            stub(admin_pb2.DeleteTopicRequest(name="orders"), metadata=bearer(BAD_TOKEN))
        assert bad.value.code() == _S.UNAUTHENTICATED
        assert "the token is not valid" in bad.value.details()


# ---------------------------------------------------------------------------- TLS and mTLS


def test_tls_connects_and_plaintext_to_a_tls_port_fails(tls_server: ServerProcess, ca: Path
                                                        ) -> None:
    with tls_channel(tls_server, ca) as channel:
        assert invoke(channel, "/grpc.health.v1.Health/Check",
                      [health_pb2.HealthCheckRequest()], []) == _S.OK
    with grpc.insecure_channel(tls_server.address) as plain:
        assert invoke(plain, "/grpc.health.v1.Health/Check",
                      [health_pb2.HealthCheckRequest()], [], timeout_s=2) == _S.UNAVAILABLE


def _whoami(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> Any:
    return channel.unary_unary(
        "/moldau.v1.AclService/WhoAmI", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=security_pb2.WhoAmIResponse.FromString,
    )(security_pb2.WhoAmIRequest(), metadata=metadata, timeout=5)


def test_mtls_identity_comes_from_the_certificate(mtls_server: ServerProcess, ca: Path) -> None:
    with tls_channel(mtls_server, ca, cert="admin") as channel:
        reply = _whoami(channel, [])
        assert (reply.principal, reply.method, reply.super_user) == ("User:admin",
                                                                     "certificate", True)
        # a token, when sent, wins over the certificate
        assert _whoami(channel, bearer(READER)).principal == "User:reader"
    with tls_channel(mtls_server, ca) as no_cert, pytest.raises(grpc.RpcError) as info:
        _whoami(no_cert, [])  # client certificates are required: the handshake fails
    assert info.value.code() == _S.UNAVAILABLE


def test_python_client_uses_tls_and_token_from_arguments_and_env(
    tls_server: ServerProcess, ca: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import moldau

    with moldau.Admin(tls_server.address, token=TOKENS[ADMIN],
                      tls_ca_file=str(ca / "ca.pem")) as admin:
        assert admin.whoami().principal == "User:admin"
        admin.create_topic("orders.client")
    monkeypatch.setenv("MOLDAU_TOKEN", TOKENS[PRODUCER])
    monkeypatch.setenv("MOLDAU_TLS_CA_FILE", str(ca / "ca.pem"))
    with moldau.Producer(tls_server.address) as producer:
        assert producer.send("orders.client", b"v").result(10).offset == 0
    with moldau.Consumer(tls_server.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([("orders.client", 0)])
        with pytest.raises(moldau.MoldauError) as info:  # the producer may not read
            _poll_until_error(consumer)
    assert info.value.code == _S.PERMISSION_DENIED
    assert isinstance(info.value, moldau.PermissionDeniedError)


def _poll_until_error(consumer: Any) -> None:
    for _ in range(20):
        consumer.poll(timeout_ms=200)


# ---------------------------------------------------------------------------- anonymous


def test_anonymous_on_loopback_is_allowed_but_needs_acls(plain_server: ServerProcess) -> None:
    with grpc.insecure_channel(plain_server.address) as channel:
        assert _whoami(channel, []).principal == "User:ANONYMOUS"
        _create(channel, "anon.t")
        fetch = [fetch_pb2.FetchRequest(topic="anon.t")]
        assert invoke(channel, "/moldau.v1.FetchService/Fetch", fetch, []) == \
            _S.PERMISSION_DENIED
        grant = security_pb2.CreateAclsRequest(acls=[security_pb2.AclBinding(
            principal="User:ANONYMOUS", resource_type="topic", resource_name="anon.t",
            operation="read")])
        assert invoke(channel, "/moldau.v1.AclService/CreateAcls", [grant],
                      bearer(ADMIN)) == _S.OK
        assert invoke(channel, "/moldau.v1.FetchService/Fetch", fetch, []) == _S.OK
        # reflection wants a real principal
        assert invoke(channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      [reflection_pb2.ServerReflectionRequest(list_services="")], []) == \
            _S.UNAUTHENTICATED


def test_revoked_token_is_refused_without_a_restart(
    tmp_path: Path, start_server: Callable[..., ServerProcess],
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tokens]\nadmin = "{hash_token("a")}"\ngone = "{hash_token("g")}"\n')
    server = start_server(env={"MOLDAU_AUTH_TOKENS_FILE": str(tokens)})
    with grpc.insecure_channel(server.address) as channel:
        assert _whoami(channel, [("authorization", "Bearer g")]).principal == "User:gone"
        tokens.write_text(f'[tokens]\nadmin = "{hash_token("a")}"\n')
        deadline = time.monotonic() + 5
        code = _S.OK
        while code == _S.OK and time.monotonic() < deadline:
            time.sleep(0.2)
            code = invoke(channel, "/moldau.v1.AclService/WhoAmI",
                          [security_pb2.WhoAmIRequest()], [("authorization", "Bearer g")])
        assert code == _S.UNAUTHENTICATED


# ---------------------------------------------------------------------------- quotas


def _grant_write(channel: grpc.Channel, topic: str, *principals: str) -> None:
    _create(channel, topic)
    acls = [security_pb2.AclBinding(principal=f"User:{p}", resource_type="topic",
                                    resource_name=topic, operation="write")
            for p in principals]
    assert invoke(channel, "/moldau.v1.AclService/CreateAcls",
                  [security_pb2.CreateAclsRequest(acls=acls)], bearer(ADMIN)) == _S.OK


def test_produce_quota_holds_the_rate_and_spares_other_principals(
    plain_server: ServerProcess,
) -> None:
    """A 1 MiB/s principal sending as fast as it may stays <= 1.1 MiB/s and is told when to
    retry; another principal sending below its own quota meanwhile is never throttled."""
    rate, seconds, chunk = 1024 * 1024, 4.0, 64 * 1024
    with grpc.insecure_channel(plain_server.address) as channel:
        _grant_write(channel, "quota.t", "q1", "q2")
        produce = channel.unary_unary(
            "/moldau.v1.ProduceService/Produce",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=produce_pb2.ProduceResponse.FromString)
        request = produce_pb2.ProduceRequest(
            topic="quota.t", partition=0,
            records=produce_pb2.RecordList(records=[common_pb2.Record(value=b"x" * chunk)]))
        size = request.ByteSize()
        other: dict[str, int] = {"ok": 0}

        def other_principal() -> None:  # 320 KiB/s, a third of its own quota
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    produce(request, metadata=bearer("q2"), timeout=5)
                    other["ok"] += 1
                except grpc.RpcError as exc:
                    key = "throttled" if exc.code() == _S.RESOURCE_EXHAUSTED else "errors"
                    other[key] = other.get(key, 0) + 1
                time.sleep(0.2)

        thread = threading.Thread(target=other_principal)
        thread.start()
        sent, refusals, retry_after = 0, 0, []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            try:
                produce(request, metadata=bearer("q1"), timeout=5)
                sent += size
            except grpc.RpcError as exc:
                if exc.code() != _S.RESOURCE_EXHAUSTED or "retry in" not in exc.details():
                    raise
                refusals += 1
                trailing = dict(exc.trailing_metadata() or ())
                retry_after.append(int(trailing["retry-after-ms"]))
                time.sleep(retry_after[-1] / 1000)
        elapsed = time.monotonic() - started
        thread.join()
    measured = sent / elapsed
    assert refusals > 0
    assert all(ms > 0 for ms in retry_after)
    assert measured <= 1.1 * rate, f"{measured / rate:.2f} MiB/s over {elapsed:.1f} s"
    assert measured >= 0.7 * rate  # the quota slows it down, it does not starve it
    assert other.get("throttled", 0) == 0, other
    assert other.get("errors", 0) == 0, other
    assert other["ok"] >= int(seconds / 0.25), other
