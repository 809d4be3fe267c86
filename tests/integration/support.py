"""Helpers shared by the integration tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from grpc_api.testing import ServerProcess
from moldau.v1 import admin_pb2_grpc, fetch_pb2_grpc, produce_pb2_grpc

#: Limits of the shared server (see tests/integration/test_errors.py).
LIMITS = {
    "MOLDAU_MAX_REQUEST_BYTES": str(1024 * 1024),
    "MOLDAU_MAX_BATCH_BYTES": str(512 * 1024),
    "MOLDAU_MAX_FETCH_BYTES": str(2 * 1024 * 1024),
    "MOLDAU_MAX_FETCH_RECORDS": "1000",
    "MOLDAU_LOG_LEVEL": "WARNING",
}

StartServer = Callable[..., ServerProcess]  # start_server(data_dir=None, env=None, ...)


@dataclass(frozen=True)
class Stubs:
    """Generated stubs on one channel."""

    channel: grpc.Channel
    admin: admin_pb2_grpc.AdminServiceStub
    produce: produce_pb2_grpc.ProduceServiceStub
    fetch: fetch_pb2_grpc.FetchServiceStub


def make_stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        channel,
        admin_pb2_grpc.AdminServiceStub(channel),
        produce_pb2_grpc.ProduceServiceStub(channel),
        fetch_pb2_grpc.FetchServiceStub(channel),
    )
