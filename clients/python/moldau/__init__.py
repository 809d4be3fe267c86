"""Moldau: the Python client for the Moldau event streaming engine.

::

    import moldau

    with moldau.Admin("127.0.0.1:7654") as admin:
        admin.create_topic("orders", partitions=3)
    with moldau.Producer("127.0.0.1:7654") as producer:
        producer.send("orders", b"hello", key=b"customer-1").result()
    with moldau.Consumer("127.0.0.1:7654", auto_offset_reset="earliest") as consumer:
        consumer.assign_all("orders")
        for record in consumer.poll(timeout_ms=1000):
            print(record.partition, record.offset, record.value)

Every class has an asyncio twin (``AsyncProducer``, ``AsyncConsumer``, ``AsyncAdmin``) with
the same options and semantics. Errors are in :mod:`moldau.errors`; ``moldau.testing`` runs a
real broker for tests.
"""

from moldau._futures import BulkFuture, RecordFuture, SendFuture
from moldau._group_types import (
    ByDuration,
    CommittedOffset,
    FromRows,
    GroupDescription,
    GroupState,
    GroupSummary,
    MemberDescription,
    OffsetAndMetadata,
    PartitionLag,
    ResetPlan,
    ResetPlanRow,
    ResetSpec,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
)
from moldau._runtime import DEFAULT_SERVER
from moldau._types import (
    BatchMetadata,
    ConsumerRecord,
    Header,
    PartitionInfo,
    PartitionOffset,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicSummary,
)
from moldau.admin import Admin, AsyncAdmin
from moldau.consumer import AsyncConsumer, Consumer, FetchedBatch
from moldau.errors import (
    AuthenticationError,
    BufferFullError,
    ClientClosedError,
    CommitFailedError,
    ConnectionFailedError,
    CorruptRecordError,
    DeliveryTimeoutError,
    GroupMembershipError,
    GroupNotEmptyError,
    GroupNotFoundError,
    InvalidRequestError,
    MoldauError,
    NoOffsetForPartitionError,
    NotFoundError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    PermissionDeniedError,
    ProducerStateError,
    RecordTooLargeError,
    RequestTimeoutError,
    ResourceExhaustedError,
    ServerError,
    StaleGenerationError,
    TopicExistsError,
    TopicNotFoundError,
    UnavailableError,
)
from moldau.producer import AsyncProducer, Producer

__all__ = [
    "DEFAULT_SERVER",
    "Admin",
    "AsyncAdmin",
    "AsyncConsumer",
    "AsyncProducer",
    "AuthenticationError",
    "BatchMetadata",
    "BufferFullError",
    "BulkFuture",
    "ByDuration",
    "ClientClosedError",
    "CommitFailedError",
    "CommittedOffset",
    "ConnectionFailedError",
    "Consumer",
    "ConsumerRecord",
    "CorruptRecordError",
    "DeliveryTimeoutError",
    "FetchedBatch",
    "FromRows",
    "GroupDescription",
    "GroupMembershipError",
    "GroupNotEmptyError",
    "GroupNotFoundError",
    "GroupState",
    "GroupSummary",
    "Header",
    "InvalidRequestError",
    "MemberDescription",
    "MoldauError",
    "NoOffsetForPartitionError",
    "NotFoundError",
    "OffsetAndMetadata",
    "OffsetOutOfRangeError",
    "PartitionInfo",
    "PartitionLag",
    "PartitionNotFoundError",
    "PartitionOffset",
    "PermissionDeniedError",
    "Producer",
    "ProducerStateError",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "RequestTimeoutError",
    "ResetPlan",
    "ResetPlanRow",
    "ResetSpec",
    "ResourceExhaustedError",
    "SendFuture",
    "ServerError",
    "ShiftBy",
    "StaleGenerationError",
    "ToDatetime",
    "ToEarliest",
    "ToLatest",
    "ToOffset",
    "TopicDescription",
    "TopicExistsError",
    "TopicNotFoundError",
    "TopicPartition",
    "TopicSummary",
    "UnavailableError",
]
