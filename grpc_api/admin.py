"""AdminService: topic lifecycle, configuration and offset lookups.

Creating and deleting a topic touch the file system (directories, fsyncs, ``topics.json``
swaps), so they run on worker threads; describing and listing read in-memory state.
"""

from __future__ import annotations

from engine.broker import TopicInfo
from engine.log.partition_log import PartitionLog
from grpc_api.errors import InvalidRequestError, unary_errors
from grpc_api.runtime import Runtime
from moldau.v1 import admin_pb2, admin_pb2_grpc, common_pb2

__all__ = ["AdminServicer", "resolve_offset"]

_Kind = common_pb2.OffsetSpec


async def resolve_offset(
    runtime: Runtime, topic: str, partition: int, spec: common_pb2.OffsetSpec
) -> int:
    """The offset an OffsetSpec names in one partition."""
    broker = runtime.broker()
    log = broker.partition(topic, partition)
    if spec.kind == _Kind.EARLIEST:
        return log.log_start_offset
    if spec.kind == _Kind.LATEST:
        return log.high_watermark
    if spec.kind == _Kind.TIMESTAMP:
        offset: int = await runtime.run(broker.offset_for_time, topic, partition, spec.timestamp_ms)
        return offset
    raise InvalidRequestError("OffsetSpec.kind must be EARLIEST, LATEST or TIMESTAMP")


def describe(info: TopicInfo, logs: list[PartitionLog]) -> admin_pb2.TopicDescription:
    """A TopicDescription from the topic's info and its partition logs."""
    description = admin_pb2.TopicDescription(
        name=info.name,
        partition_count=info.partitions,
        internal=info.internal,
        configs={key: str(value) for key, value in info.config.to_dict().items()},
        overrides=dict(info.overrides),
    )
    for number, log in enumerate(logs):
        description.partitions.add(
            partition=number,
            log_start_offset=log.log_start_offset,
            high_watermark=log.high_watermark,
            log_end_offset=log.log_end_offset,
            size_bytes=log.size_bytes,
            segment_count=log.segment_count,
            read_only_reason=log.read_only_reason or "",
        )
    return description


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Translates AdminService calls into Broker topic operations."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @unary_errors
    async def CreateTopic(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.CreateTopicRequest, context: object
    ) -> admin_pb2.CreateTopicResponse:
        broker = self._runtime.broker()
        info: TopicInfo = await self._runtime.run(
            broker.create_topic, request.name, request.partitions, dict(request.configs)
        )
        return admin_pb2.CreateTopicResponse(topic=describe(info, broker.partitions(info.name)))

    @unary_errors
    async def DeleteTopic(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.DeleteTopicRequest, context: object
    ) -> admin_pb2.DeleteTopicResponse:
        broker = self._runtime.broker()
        if not broker.has_topic(request.name):  # fail fast, without a thread hop
            broker.describe_topic(request.name)
        await self._runtime.run(broker.delete_topic, request.name)
        self._runtime.topic_deleted(request.name)
        return admin_pb2.DeleteTopicResponse()

    @unary_errors
    async def ListTopics(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.ListTopicsRequest, context: object
    ) -> admin_pb2.ListTopicsResponse:
        broker = self._runtime.broker()
        response = admin_pb2.ListTopicsResponse()
        for info in broker.list_topics(include_internal=request.include_internal):
            response.topics.add(
                name=info.name,
                partition_count=info.partitions,
                internal=info.internal,
                overrides=dict(info.overrides),
            )
        return response

    @unary_errors
    async def DescribeTopic(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.DescribeTopicRequest, context: object
    ) -> admin_pb2.DescribeTopicResponse:
        broker = self._runtime.broker()
        info = broker.describe_topic(request.name)
        return admin_pb2.DescribeTopicResponse(
            topic=describe(info, broker.partitions(request.name))
        )

    @unary_errors
    async def AlterTopicConfig(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.AlterTopicConfigRequest, context: object
    ) -> admin_pb2.AlterTopicConfigResponse:
        both = sorted(set(request.set) & set(request.reset))
        if both:
            raise InvalidRequestError(
                f"keys {', '.join(both)} are both set and reset; choose one per key"
            )
        changes: dict[str, str | None] = dict(request.set)
        changes.update(dict.fromkeys(request.reset))
        broker = self._runtime.broker()
        info: TopicInfo = await self._runtime.run(
            broker.alter_topic_config, request.name, changes
        )
        return admin_pb2.AlterTopicConfigResponse(
            topic=describe(info, broker.partitions(request.name))
        )

    @unary_errors
    async def ListOffsets(  # noqa: N802  (the RPC name from the proto)
        self, request: admin_pb2.ListOffsetsRequest, context: object
    ) -> admin_pb2.ListOffsetsResponse:
        broker = self._runtime.broker()
        logs = broker.partitions(request.topic)
        numbers = list(request.partitions) or list(range(len(logs)))
        response = admin_pb2.ListOffsetsResponse()
        for number in numbers:
            log = broker.partition(request.topic, number)
            offset = await resolve_offset(self._runtime, request.topic, number, request.spec)
            response.offsets.add(
                partition=number,
                offset=offset,
                log_start_offset=log.log_start_offset,
                high_watermark=log.high_watermark,
            )
        return response
