"""What each RPC needs: the authorisation table, one entry per method.

Every method the server registers must have a rule here (or its service a service rule);
:mod:`grpc_api.auth` refuses a method with none ("no authorisation rule ...; this is a bug"),
and ``tests/integration/test_security.py`` fails for any method of the generated descriptors
without an expectation. Adding a service is one line per method, for example::

    "/moldau.v1.QueueService/Receive": acl(on(QUEUE, READ, "queue"), quota=QuotaKind.FETCH),

Access levels (:class:`Access`):

- ``OPEN``: anyone, credentials not even looked at (health probes);
- ``IDENTIFIED``: any caller that authenticates, or anonymous where anonymous is allowed;
- ``AUTHENTICATED``: a real principal, never anonymous (reflection);
- ``ACL``: identified, then every :data:`Requirement` computed from the request must be allowed
  by the ACLs. For a client stream, the first message is checked (``every_message=False``) or
  each message (``every_message=True``: ProduceStream names a topic per message).

A ``filter`` trims a list response to what the caller may describe (ListTopics, ListGroups).
``quota`` says which byte quota the call counts against (requests count for every call).

Consumer-group decisions (documented in docs/security.md): joining needs READ on the group and
READ on each named topic. A pattern subscription needs only READ on the group: the assignment
may then include topics the member cannot read, but its fetches and commits of those are
refused, so nothing leaks; grant prefixed topic READ ACLs that cover the pattern.

Queue and exchange decisions: declaring a queue needs CREATE on the queue and READ on its
topic (a queue reads the topic for its consumers); receiving and settling (ack, nack, extend,
release, ScheduleRetry) need READ on the queue. Dead letters hold payloads: listing needs READ
on the dead-letter topic (or on the queue, when selected by queue), redriving ALTER (a dry run
READ). An exchange writes on behalf of whoever binds: Bind needs ALTER on the exchange and
WRITE on the destination topic, and a declared alternate topic needs WRITE too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.security import CLUSTER_NAME, Operation, ResourceType
from grpc_api.quotas import QuotaKind

__all__ = [
    "METHOD_RULES",
    "SERVICE_RULES",
    "Access",
    "Allowed",
    "Requirement",
    "Rule",
    "acl",
    "on",
    "rule_for",
]

Requirement = tuple[ResourceType, Operation, str]
#: ``allowed(resource_type, name, operation)`` for the caller, as filters receive it.
Allowed = Callable[[ResourceType, str, Operation], bool]

TOPIC, GROUP, STREAM, CLUSTER = (
    ResourceType.TOPIC, ResourceType.GROUP, ResourceType.STREAM, ResourceType.CLUSTER,
)
QUEUE, EXCHANGE = ResourceType.QUEUE, ResourceType.EXCHANGE
READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = (
    Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DELETE, Operation.ALTER,
    Operation.DESCRIBE,
)


class Access(Enum):
    OPEN = "open"
    IDENTIFIED = "identified"
    AUTHENTICATED = "authenticated"
    ACL = "acl"


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    checks: Callable[[Any], Iterable[Requirement]] | None = None
    every_message: bool = False
    filter: Callable[[Any, Allowed], None] | None = None
    quota: QuotaKind | None = None


def acl(
    checks: Callable[[Any], Iterable[Requirement]],
    *,
    every_message: bool = False,
    quota: QuotaKind | None = None,
) -> Rule:
    """A rule that needs the ACLs to allow every requirement ``checks(request)`` returns."""
    return Rule(Access.ACL, checks, every_message=every_message, quota=quota)


def on(resource_type: ResourceType, operation: Operation, field: str) -> Callable[
        [Any], Iterable[Requirement]]:
    """Checks for ``operation`` on the resource named by the request's ``field``."""

    def checks(request: Any) -> Iterable[Requirement]:
        return ((resource_type, operation, getattr(request, field)),)

    return checks


def _cluster(operation: Operation) -> Callable[[Any], Iterable[Requirement]]:
    return lambda _request: ((CLUSTER, operation, CLUSTER_NAME),)


# ---------------------------------------------------------------------------- groups


def _group_join(request: Any) -> Iterable[Requirement]:
    if request.WhichOneof("request") != "join":
        return ()  # the servicer refuses a stream that does not start with join
    join = request.join
    return ((GROUP, READ, join.group), *((TOPIC, READ, t) for t in sorted(set(join.topics))))


def _group_commit(request: Any) -> Iterable[Requirement]:
    topics = sorted({o.topic for o in request.offsets})
    return ((GROUP, READ, request.group), *((TOPIC, READ, t) for t in topics))


def _group_reset(request: Any) -> Iterable[Requirement]:
    return ((GROUP, ALTER if request.execute else DESCRIBE, request.group),)


def _fetch_subscribe(request: Any) -> Iterable[Requirement]:
    if request.WhichOneof("request") != "start":
        return ()  # the servicer refuses a stream that does not start with start
    return ((TOPIC, READ, request.start.topic),)


def _only_describable_topics(response: Any, allowed: Allowed) -> None:
    kept = [t for t in response.topics if allowed(TOPIC, t.name, DESCRIBE)]
    del response.topics[:]
    response.topics.extend(kept)


def _only_describable_groups(response: Any, allowed: Allowed) -> None:
    kept = [g for g in response.groups if allowed(GROUP, g.group, DESCRIBE)]
    del response.groups[:]
    response.groups.extend(kept)


# ---------------------------------------------------------------------------- event store


def stream_resource(topic: str, stream: str) -> str:
    """The ACL resource name of an event-store stream: ``<store topic>/<stream id>``."""
    return f"{topic}/{stream}"


def _stream(operation: Operation) -> Callable[[Any], Iterable[Requirement]]:
    return lambda r: ((STREAM, operation, stream_resource(r.topic, r.stream)),)


def _category_or_topic(topic: str, category: str) -> Iterable[Requirement]:
    """Reading a category needs READ on the stream prefix; the whole topic needs topic READ."""
    if not category:
        return ((TOPIC, READ, topic),)
    prefix = category.removesuffix("*").removesuffix("-") + "-"
    return ((STREAM, READ, stream_resource(topic, prefix)),)


def _events_subscribe(request: Any) -> Iterable[Requirement]:
    if request.WhichOneof("source") == "stream":
        return ((STREAM, READ, stream_resource(request.topic, request.stream.stream)),)
    return _category_or_topic(request.topic, request.all.category)


def _pipelined_appends(request: Any) -> Iterable[Requirement]:
    """WRITE on the stream of every append a pipelined message (``ParsedAppends``) carries."""
    return tuple((STREAM, WRITE, stream_resource(topic, stream))
                 for topic, stream in request.streams())


# ---------------------------------------------------------------------------- queues, exchanges


def _queue_declare(request: Any) -> Iterable[Requirement]:
    return ((QUEUE, CREATE, request.config.name), (TOPIC, READ, request.config.topic))


def _queue_consume(request: Any) -> Iterable[Requirement]:
    if not request.HasField("start"):
        return ()  # the servicer refuses a stream that does not start with start
    return ((QUEUE, READ, request.start.queue),)


def _dead_letters(operation: Operation) -> Callable[[Any], Iterable[Requirement]]:
    def checks(request: Any) -> Iterable[Requirement]:
        selection = request.selection
        wanted = READ if getattr(request, "dry_run", False) else operation
        if selection.WhichOneof("source") == "queue":
            return ((QUEUE, wanted, selection.queue),)
        return ((TOPIC, wanted, selection.dlq_topic),)

    return checks


def _exchange_declare(request: Any) -> Iterable[Requirement]:
    checks: list[Requirement] = [(EXCHANGE, CREATE, request.name)]
    if request.HasField("alternate"):
        checks.append((TOPIC, WRITE, request.alternate))
    return checks


def _exchange_bind(request: Any) -> Iterable[Requirement]:
    binding = request.binding
    return ((EXCHANGE, ALTER, binding.exchange), (TOPIC, WRITE, binding.destination))


def _only_describable_queues(response: Any, allowed: Allowed) -> None:
    kept = [q for q in response.queues if allowed(QUEUE, q.config.name, DESCRIBE)]
    del response.queues[:]
    response.queues.extend(kept)


def _only_describable_exchanges(response: Any, allowed: Allowed) -> None:
    kept = [e for e in response.exchanges if allowed(EXCHANGE, e.exchange.name, DESCRIBE)]
    del response.exchanges[:]
    response.exchanges.extend(kept)


_PRODUCE, _FETCH = QuotaKind.PRODUCE, QuotaKind.FETCH

#: Full method name -> rule.
METHOD_RULES: dict[str, Rule] = {
    # topics
    "/moldau.v1.AdminService/CreateTopic": acl(on(TOPIC, CREATE, "name")),
    "/moldau.v1.AdminService/DeleteTopic": acl(on(TOPIC, DELETE, "name")),
    "/moldau.v1.AdminService/ListTopics": Rule(Access.IDENTIFIED,
                                               filter=_only_describable_topics),
    "/moldau.v1.AdminService/DescribeTopic": acl(on(TOPIC, DESCRIBE, "name")),
    "/moldau.v1.AdminService/AlterTopicConfig": acl(on(TOPIC, ALTER, "name")),
    "/moldau.v1.AdminService/ListOffsets": acl(on(TOPIC, DESCRIBE, "topic")),
    # produce and fetch
    "/moldau.v1.ProduceService/Produce": acl(on(TOPIC, WRITE, "topic"), quota=_PRODUCE),
    "/moldau.v1.ProduceService/ProduceStream": acl(on(TOPIC, WRITE, "topic"),
                                                   every_message=True, quota=_PRODUCE),
    "/moldau.v1.FetchService/Fetch": acl(on(TOPIC, READ, "topic"), quota=_FETCH),
    "/moldau.v1.FetchService/Subscribe": acl(_fetch_subscribe, quota=_FETCH),
    # consumer groups
    "/moldau.v1.GroupService/Subscribe": acl(_group_join),
    "/moldau.v1.GroupService/CommitOffsets": acl(_group_commit),
    "/moldau.v1.GroupService/FetchOffsets": acl(on(GROUP, DESCRIBE, "group")),
    "/moldau.v1.GroupService/ListGroups": Rule(Access.IDENTIFIED,
                                               filter=_only_describable_groups),
    "/moldau.v1.GroupService/DescribeGroup": acl(on(GROUP, DESCRIBE, "group")),
    "/moldau.v1.GroupService/DeleteGroup": acl(on(GROUP, DELETE, "group")),
    "/moldau.v1.GroupService/DeleteOffsets": acl(on(GROUP, DELETE, "group")),
    "/moldau.v1.GroupService/ResetOffsets": acl(_group_reset),
    # event store: streams are "<topic>/<stream>", categories the prefix "<topic>/<category>-"
    "/moldau.v1.EventStoreService/CreateStoreTopic": acl(on(TOPIC, CREATE, "topic")),
    "/moldau.v1.EventStoreService/AppendToStream": acl(_stream(WRITE), quota=_PRODUCE),
    "/moldau.v1.EventStoreService/ReadStream": acl(_stream(READ), quota=_FETCH),
    "/moldau.v1.EventStoreService/ReadAll": acl(
        lambda r: _category_or_topic(r.topic, r.category), quota=_FETCH),
    "/moldau.v1.EventStoreService/DeleteStream": acl(_stream(DELETE)),
    "/moldau.v1.EventStoreService/TruncateStream": acl(_stream(DELETE)),
    "/moldau.v1.EventStoreService/SaveSnapshot": acl(_stream(WRITE), quota=_PRODUCE),
    "/moldau.v1.EventStoreService/LoadSnapshot": acl(_stream(READ), quota=_FETCH),
    "/moldau.v1.EventStoreService/Subscribe": acl(_events_subscribe, quota=_FETCH),
    "/moldau.v1.EventStoreService/AppendStream": acl(_pipelined_appends, every_message=True,
                                                     quota=_PRODUCE),
    "/moldau.v1.EventStoreService/ListStreams": acl(
        lambda r: _category_or_topic(r.topic, r.category)),
    # work queues
    "/moldau.v1.QueueService/DeclareQueue": acl(_queue_declare),
    "/moldau.v1.QueueService/DeleteQueue": acl(on(QUEUE, DELETE, "name")),
    "/moldau.v1.QueueService/ListQueues": Rule(Access.IDENTIFIED,
                                               filter=_only_describable_queues),
    "/moldau.v1.QueueService/DescribeQueue": acl(on(QUEUE, DESCRIBE, "name")),
    "/moldau.v1.QueueService/Receive": acl(on(QUEUE, READ, "queue"), quota=_FETCH),
    "/moldau.v1.QueueService/Ack": acl(on(QUEUE, READ, "queue")),
    "/moldau.v1.QueueService/Nack": acl(on(QUEUE, READ, "queue")),
    "/moldau.v1.QueueService/ExtendLease": acl(on(QUEUE, READ, "queue")),
    "/moldau.v1.QueueService/Release": acl(on(QUEUE, READ, "queue")),
    "/moldau.v1.QueueService/Consume": acl(_queue_consume, quota=_FETCH),
    "/moldau.v1.QueueService/ListDeadLetters": acl(_dead_letters(READ), quota=_FETCH),
    "/moldau.v1.QueueService/Redrive": acl(_dead_letters(ALTER)),
    "/moldau.v1.QueueService/ScheduleRetry": acl(on(QUEUE, READ, "queue")),
    # exchanges
    "/moldau.v1.ExchangeService/DeclareExchange": acl(_exchange_declare),
    "/moldau.v1.ExchangeService/DeleteExchange": acl(on(EXCHANGE, DELETE, "name")),
    "/moldau.v1.ExchangeService/ListExchanges": Rule(Access.IDENTIFIED,
                                                     filter=_only_describable_exchanges),
    "/moldau.v1.ExchangeService/DescribeExchange": acl(on(EXCHANGE, DESCRIBE, "name")),
    "/moldau.v1.ExchangeService/Bind": acl(_exchange_bind),
    "/moldau.v1.ExchangeService/Unbind": acl(lambda r: ((EXCHANGE, ALTER, r.binding.exchange),)),
    "/moldau.v1.ExchangeService/ListBindings": acl(on(EXCHANGE, DESCRIBE, "exchange")),
    # ACL administration
    "/moldau.v1.AclService/CreateAcls": acl(_cluster(ALTER)),
    "/moldau.v1.AclService/DeleteAcls": acl(_cluster(ALTER)),
    "/moldau.v1.AclService/ListAcls": acl(_cluster(DESCRIBE)),
    "/moldau.v1.AclService/WhoAmI": Rule(Access.IDENTIFIED),
}

#: Service name -> rule for every method of services that are not Moldau's own.
SERVICE_RULES: dict[str, Rule] = {
    "grpc.health.v1.Health": Rule(Access.OPEN),
    "grpc.reflection.v1alpha.ServerReflection": Rule(Access.AUTHENTICATED),
    "grpc.reflection.v1.ServerReflection": Rule(Access.AUTHENTICATED),
}


def rule_for(method: str) -> Rule | None:
    """The rule of a full method name (``/package.Service/Method``), None when there is none."""
    rule = METHOD_RULES.get(method)
    if rule is None:
        service = method.lstrip("/").rpartition("/")[0]
        rule = SERVICE_RULES.get(service)
    return rule
