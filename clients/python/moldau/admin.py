"""Topic and group administration: :class:`AsyncAdmin`, and :class:`Admin` running it on a
loop thread.

Every method is one AdminService or GroupService call; results are the frozen value objects of
:mod:`moldau._types` and :mod:`moldau._group_types`, and failures are :mod:`moldau.errors`
classes carrying the server's message (``TopicExistsError``, ``TopicNotFoundError``,
``InvalidRequestError`` ...). The group methods (``list_groups``, ``describe_group``,
``reset_offsets`` ...) are written in :mod:`moldau._group_admin` and inherited from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moldau._acl_admin import AclAdminMixin, AsyncAclAdminMixin
from moldau._group_admin import AsyncGroupAdminMixin, GroupAdminMixin
from moldau._runtime import (
    AsyncClosing,
    BlockingTwin,
    Credentials,
    LoopThread,
    call,
    connection_error,
    open_channel,
    resolve_server,
)
from moldau._types import (
    PartitionInfo,
    PartitionOffset,
    TopicDescription,
    TopicSummary,
)
from moldau.errors import ClientClosedError, MoldauError
from moldau.v1 import admin_pb2, admin_pb2_grpc, common_pb2, groups_pb2_grpc, security_pb2_grpc

__all__ = ["Admin", "AsyncAdmin", "OffsetSpecLike", "offset_spec"]

OffsetSpecLike = Literal["earliest", "latest"] | int
"""``"earliest"`` (log start), ``"latest"`` (high watermark) or a timestamp in ms."""


def offset_spec(spec: OffsetSpecLike) -> common_pb2.OffsetSpec:
    """The proto OffsetSpec for ``spec``; ValueError for anything else."""
    kinds = common_pb2.OffsetSpec
    if spec == "earliest":
        return common_pb2.OffsetSpec(kind=kinds.EARLIEST)
    if spec == "latest":
        return common_pb2.OffsetSpec(kind=kinds.LATEST)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return common_pb2.OffsetSpec(kind=kinds.TIMESTAMP, timestamp_ms=spec)
    raise ValueError(f"offset spec must be 'earliest', 'latest' or a timestamp in ms: {spec!r}")


def _description(message: admin_pb2.TopicDescription) -> TopicDescription:
    return TopicDescription(
        name=message.name,
        partition_count=message.partition_count,
        internal=message.internal,
        partitions=tuple(
            PartitionInfo(
                partition=p.partition,
                log_start_offset=p.log_start_offset,
                high_watermark=p.high_watermark,
                log_end_offset=p.log_end_offset,
                size_bytes=p.size_bytes,
                segment_count=p.segment_count,
                read_only_reason=p.read_only_reason,
            )
            for p in message.partitions
        ),
        configs=dict(sorted(message.configs.items())),
        overrides=dict(sorted(message.overrides.items())),
    )


class AsyncAdmin(AsyncGroupAdminMixin, AsyncAclAdminMixin, AsyncClosing):
    """Creates, inspects, reconfigures and deletes topics; inspects, resets and deletes groups;
    manages ACLs.

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        timeout_ms: Deadline of each call.
        token: Bearer token; default ``$MOLDAU_TOKEN``.
        tls_ca_file: CA that signed the server's certificate (TLS); default
            ``$MOLDAU_TLS_CA_FILE``.
        tls_cert_file: Client certificate for mTLS; default ``$MOLDAU_TLS_CERT_FILE``.
        tls_key_file: Its key; default ``$MOLDAU_TLS_KEY_FILE``.

    Use ``async with AsyncAdmin() as admin:``, or call :meth:`close` when done. The channel
    opens on first use, on the loop that uses it.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout_ms: int = 30_000,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.server = resolve_server(server)
        self._timeout_s = timeout_ms / 1000.0
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        self._acls_stub: security_pb2_grpc.AclServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: admin_pb2_grpc.AdminServiceStub | None = None
        self._groups_stub: groups_pb2_grpc.GroupServiceStub | None = None
        self._closed = False

    def _open(self) -> grpc.aio.Channel:
        if self._closed:
            raise ClientClosedError("the admin client is closed")
        if self._channel is None:
            self._channel = open_channel(self.server, self._credentials)
        return self._channel

    def _admin(self) -> admin_pb2_grpc.AdminServiceStub:
        if self._stub is None:
            self._stub = admin_pb2_grpc.AdminServiceStub(self._open())
        return self._stub

    def _groups(self) -> groups_pb2_grpc.GroupServiceStub:
        if self._groups_stub is None:
            self._groups_stub = groups_pb2_grpc.GroupServiceStub(self._open())
        return self._groups_stub

    def _acls(self) -> security_pb2_grpc.AclServiceStub:
        if self._acls_stub is None:
            self._acls_stub = security_pb2_grpc.AclServiceStub(self._open())
        return self._acls_stub

    async def _acl_call(self, name: str, request: object) -> Any:
        return await self._invoke(getattr(self._acls(), name), request)

    async def _call(self, name: str, request: object) -> object:
        return await self._invoke(getattr(self._admin(), name), request)

    async def _group_call(self, name: str, request: object) -> object:
        return await self._invoke(getattr(self._groups(), name), request)

    async def _invoke(self, method: Any, request: object) -> object:
        try:
            return await call(method, request, self._timeout_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None

    async def health(self, service: str = "") -> str:
        """The gRPC health status of ``service`` ("" = the broker): ``SERVING``,
        ``NOT_SERVING`` (recovering or shutting down) or ``SERVICE_UNKNOWN``."""
        stub = health_pb2_grpc.HealthStub(self._open())
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._invoke(stub.Check, request)
        assert isinstance(reply, health_pb2.HealthCheckResponse)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def create_topic(
        self, name: str, partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> TopicDescription:
        """Create a topic; ``configs`` are overrides such as ``{"retention.ms": "3600000"}``."""
        request = admin_pb2.CreateTopicRequest(
            name=name, partitions=partitions, configs=dict(configs or {})
        )
        reply = await self._call("CreateTopic", request)
        assert isinstance(reply, admin_pb2.CreateTopicResponse)
        return _description(reply.topic)

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and all its data."""
        await self._call("DeleteTopic", admin_pb2.DeleteTopicRequest(name=name))

    async def list_topics(self, *, include_internal: bool = False) -> list[TopicSummary]:
        reply = await self._call(
            "ListTopics", admin_pb2.ListTopicsRequest(include_internal=include_internal)
        )
        assert isinstance(reply, admin_pb2.ListTopicsResponse)
        return [
            TopicSummary(t.name, t.partition_count, t.internal, dict(sorted(t.overrides.items())))
            for t in reply.topics
        ]

    async def describe_topic(self, name: str) -> TopicDescription:
        reply = await self._call("DescribeTopic", admin_pb2.DescribeTopicRequest(name=name))
        assert isinstance(reply, admin_pb2.DescribeTopicResponse)
        return _description(reply.topic)

    async def alter_topic_config(
        self,
        name: str,
        set_configs: Mapping[str, str] | None = None,
        reset_configs: Iterable[str] = (),
    ) -> TopicDescription:
        """Set some overrides and reset others to the broker default, atomically."""
        request = admin_pb2.AlterTopicConfigRequest(
            name=name, set=dict(set_configs or {}), reset=list(reset_configs)
        )
        reply = await self._call("AlterTopicConfig", request)
        assert isinstance(reply, admin_pb2.AlterTopicConfigResponse)
        return _description(reply.topic)

    async def list_offsets(
        self,
        topic: str,
        spec: OffsetSpecLike = "latest",
        partitions: Sequence[int] | None = None,
    ) -> list[PartitionOffset]:
        """Resolve ``spec`` per partition (all partitions when ``partitions`` is None).

        A timestamp resolves to the first offset whose record time is >= it, else to the
        high watermark.
        """
        request = admin_pb2.ListOffsetsRequest(
            topic=topic, partitions=list(partitions or ()), spec=offset_spec(spec)
        )
        reply = await self._call("ListOffsets", request)
        assert isinstance(reply, admin_pb2.ListOffsetsResponse)
        return [
            PartitionOffset(o.partition, o.offset, o.log_start_offset, o.high_watermark)
            for o in reply.offsets
        ]

    async def close(self) -> None:
        self._closed = True
        self._stub = self._groups_stub = self._acls_stub = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None



class Admin(GroupAdminMixin, AclAdminMixin, BlockingTwin[AsyncAdmin]):
    """The blocking twin of :class:`AsyncAdmin`; same arguments, same results."""

    _async: AsyncAdmin

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout_ms: int = 30_000,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self._async = AsyncAdmin(
            server, timeout_ms=timeout_ms, token=token, tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
        )
        self.server = self._async.server
        self._thread = LoopThread("moldau-admin")

    def create_topic(
        self, name: str, partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> TopicDescription:
        return self._thread.run(self._async.create_topic(name, partitions, configs))

    def health(self, service: str = "") -> str:
        return self._thread.run(self._async.health(service))

    def delete_topic(self, name: str) -> None:
        self._thread.run(self._async.delete_topic(name))

    def list_topics(self, *, include_internal: bool = False) -> list[TopicSummary]:
        return self._thread.run(self._async.list_topics(include_internal=include_internal))

    def describe_topic(self, name: str) -> TopicDescription:
        return self._thread.run(self._async.describe_topic(name))

    def alter_topic_config(
        self,
        name: str,
        set_configs: Mapping[str, str] | None = None,
        reset_configs: Iterable[str] = (),
    ) -> TopicDescription:
        return self._thread.run(self._async.alter_topic_config(name, set_configs, reset_configs))

    def list_offsets(
        self,
        topic: str,
        spec: OffsetSpecLike = "latest",
        partitions: Sequence[int] | None = None,
    ) -> list[PartitionOffset]:
        return self._thread.run(self._async.list_offsets(topic, spec, partitions))

