"""The broker server process: ``moldau serve`` / ``python -m grpc_api``.

Lifecycle:

1. bind and start gRPC with health NOT_SERVING, so probes get an answer during recovery;
2. open the broker (recovering partitions) on a worker thread, then the views that live in
   it: group coordinator, event store, queue manager, exchange registry and router;
3. start the background work: the router's thread, group maintenance (session timeouts) and
   queue maintenance (lease expiry, due retries, start offsets; every 100 ms);
4. health SERVING, print ``moldau serving on HOST:PORT (data: DIR)`` to stdout (with
   ``; tcp: HOST:PORT`` inside the parentheses when the TCP port is on);
5. on SIGTERM/SIGINT: health NOT_SERVING, wake waiting readers so they end, stop the
   maintenance tasks, stop accepting calls and give in-flight ones ``shutdown_grace_ms`` to
   finish, then stop the router (after its current step), close the queues and the event
   store, close the broker (flush and write the clean-shutdown marker) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.broker import Broker, BrokerSettings
from engine.clock import SystemClock
from engine.errors import EngineError
from engine.groups import GroupCoordinator
from engine.security import AclStore
from engine.views.eventstore import EventStore
from engine.views.queues import QueueManager
from engine.views.routing import ExchangeRegistry, Router
from grpc_api.acls import AclServicer
from grpc_api.admin import AdminServicer
from grpc_api.auth import Security
from grpc_api.callctx import CallContextInterceptor
from grpc_api.config import ConfigError, ServerConfig, load_config, parse_listen
from grpc_api.disk_space import DiskSpaceMonitor
from grpc_api.eventstore import EventStoreServicer, add_event_store_service
from grpc_api.exchanges import ExchangeServicer
from grpc_api.fetch import FetchServicer, add_fetch_service
from grpc_api.groups import GroupServicer, run_group_maintenance
from grpc_api.logs import configure_logging
from grpc_api.metrics import start_metrics
from grpc_api.produce import ProduceServicer
from grpc_api.queues import QueueServicer, run_queue_maintenance
from grpc_api.runtime import Runtime
from grpc_api.tcp_port import HandlerRegistry, TcpPort
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    eventstore_pb2,
    exchanges_pb2,
    exchanges_pb2_grpc,
    fetch_pb2,
    groups_pb2,
    groups_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)

__all__ = ["SERVICE_NAMES", "main", "serve"]

log = logging.getLogger("moldau.server")

#: Fully qualified names of the Moldau services, as health and reflection know them.
SERVICE_NAMES: tuple[str, ...] = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    produce_pb2.DESCRIPTOR.services_by_name["ProduceService"].full_name,
    fetch_pb2.DESCRIPTOR.services_by_name["FetchService"].full_name,
    groups_pb2.DESCRIPTOR.services_by_name["GroupService"].full_name,
    eventstore_pb2.DESCRIPTOR.services_by_name["EventStoreService"].full_name,
    security_pb2.DESCRIPTOR.services_by_name["AclService"].full_name,
    queues_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    exchanges_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name,
)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Health:
    """The overall ("") and per-service health statuses, moved together."""

    def __init__(self) -> None:
        self.servicer: Any = health.aio.HealthServicer()

    async def set_all(self, status: Any) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.servicer.set(name, status)


@dataclass(frozen=True, slots=True)
class _Servers:
    """The gRPC server, and the handlers and interceptors the TCP port runs too."""

    grpc: Any
    handlers: HandlerRegistry
    interceptors: list[Any]


def build_server(
    runtime: Runtime, health_servicer: Any, security: Security | None = None
) -> _Servers:
    """A grpc.aio server with the Moldau services, health and reflection registered.

    ``security`` (credentials, ACLs, quotas) adds its interceptor only when auth or a quota is
    on; without it the server has auth off.
    """
    config = runtime.config
    security = security or Security(config)
    calls = CallContextInterceptor(config.max_connections)
    interceptors = [calls, *security.interceptors()]  # request ids first, then auth
    grpc_server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_concurrent_streams", config.max_in_flight_per_connection),
            ("grpc.max_send_message_length", -1),
            # without this a second server could bind the same port and steal half the calls
            ("grpc.so_reuseport", 0),
        ]
    )
    server = HandlerRegistry(grpc_server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
    produce_pb2_grpc.add_ProduceServiceServicer_to_server(ProduceServicer(runtime), server)
    add_fetch_service(FetchServicer(runtime), server)
    groups_pb2_grpc.add_GroupServiceServicer_to_server(GroupServicer(runtime), server)
    add_event_store_service(EventStoreServicer(runtime), server)
    security_pb2_grpc.add_AclServiceServicer_to_server(AclServicer(runtime, security), server)
    queues_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(runtime), server)
    exchanges_pb2_grpc.add_ExchangeServiceServicer_to_server(ExchangeServicer(runtime), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(  # gRPC only: it picks its servicer by server type
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    return _Servers(grpc_server, server, interceptors)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> int:
    """Run the server until ``stop`` is set (or SIGTERM/SIGINT); returns the exit code."""
    stop = stop or asyncio.Event()
    try:
        security = Security.from_config(config)
        credentials = security.server_credentials()
        tcp_ssl = security.ssl_context() if config.tcp_listen else None
    except ConfigError as exc:
        print(f"moldau: {exc}", file=sys.stderr, flush=True)
        return 2
    _install_signal_handlers(stop)
    runtime = Runtime(config)
    health_state = _Health()
    await health_state.set_all(_NOT_SERVING)  # before start: the servicer defaults to SERVING
    servers = build_server(runtime, health_state.servicer, security)
    server = servers.grpc
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as exc:
        port = 0
        log.debug("bind failed: %s", exc)
    if not port:
        print(f"moldau: cannot listen on {config.listen} (in use, or not a local address)",
              file=sys.stderr, flush=True)
        runtime.executor.shutdown()
        return 1
    await server.start()
    tcp = TcpPort(servers.handlers, servers.interceptors, config.max_request_bytes,
                  tcp_ssl, config.max_in_flight_per_connection)
    tcp_port = 0
    if config.tcp_listen:
        host, wanted = parse_listen(config.tcp_listen)
        try:
            tcp_port = await tcp.start(host, wanted)
        except OSError as exc:
            print(f"moldau: cannot listen on {config.tcp_listen} (tcp_listen): {exc.strerror}",
                  file=sys.stderr, flush=True)
            await server.stop(0)
            runtime.executor.shutdown()
            return 1
    try:
        storage = await runtime.run(_open_storage, config)
        broker = storage.broker
        security.set_store(await runtime.run(AclStore.open, broker, SystemClock()))
    except (EngineError, OSError) as exc:
        print(f"moldau: cannot open the data directory {config.data_dir}: {exc}",
              file=sys.stderr, flush=True)
        await server.stop(0)
        runtime.executor.shutdown()
        return 1
    runtime.set_broker(broker, storage.coordinator)
    runtime.set_event_store(storage.event_store)
    runtime.set_views(storage.queues, storage.registry, storage.router)
    storage.router.start()
    maintenance = [
        asyncio.create_task(run_group_maintenance(runtime, storage.coordinator)),
        asyncio.create_task(run_queue_maintenance(runtime, storage.queues)),
    ]
    metrics_server = _start_metrics(runtime, config)
    # What start-up built (modules, recovered indexes, views) lives until shutdown: take it
    # out of the collector's sight, so a full collection under load walks only new objects
    # and does not stall every call for milliseconds.
    gc.collect()
    gc.freeze()
    if not stop.is_set():  # a SIGTERM during recovery skips straight to shutdown
        await health_state.set_all(_SERVING)
        host = config.host if ":" not in config.host else f"[{config.host}]"
        tcp_text = ""
        if tcp_port:
            tcp_host = parse_listen(config.tcp_listen)[0]
            tcp_host = tcp_host if ":" not in tcp_host else f"[{tcp_host}]"
            tcp_text = f"; tcp: {tcp_host}:{tcp_port}"
        print(f"moldau serving on {host}:{port} (data: {config.data_dir}{tcp_text})", flush=True)
        await stop.wait()
    log.info("shutting down: finishing in-flight calls (grace %d ms)", config.shutdown_grace_ms)
    await health_state.servicer.enter_graceful_shutdown()
    runtime.begin_shutdown()
    for task in maintenance:
        task.cancel()
    grace_s = config.shutdown_grace_ms / 1000.0
    await asyncio.gather(server.stop(grace_s), tcp.close(grace_s))
    # appends of calls cancelled at the end of the grace period may still be running: let them
    # finish before the partitions are closed, so none fails half-way
    await asyncio.to_thread(runtime.executor.shutdown, True)
    # the router appends on its own thread: stop it (after its step) before the partitions
    await asyncio.to_thread(storage.router.close)
    await asyncio.to_thread(storage.queues.close)  # detaches from the topics; leases end
    await asyncio.to_thread(storage.event_store.close)  # checkpoints the stream indexes
    await asyncio.to_thread(broker.close)
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("stopped; the data directory was closed cleanly")
    return 0


class _DiskChecksOnly:
    """Without a metrics endpoint the free-space checks still run, so the WARNING comes."""

    def __init__(self, runtime: Runtime) -> None:
        self.disk = DiskSpaceMonitor.from_config(runtime.config)
        self.disk.start()

    def shutdown(self) -> None:
        self.disk.stop()


def _start_metrics(runtime: Runtime, config: ServerConfig) -> Any:
    """The metrics HTTP server (or, when off or the port is taken, the free-space checks
    alone: the broker runs on either way); ``shutdown()`` stops what was started."""
    if not config.metrics_listen:
        return _DiskChecksOnly(runtime)
    try:
        metrics_server, port = start_metrics(runtime, config.metrics_listen)
    except OSError as exc:
        log.warning("metrics disabled: cannot listen on %s: %s", config.metrics_listen, exc)
        return _DiskChecksOnly(runtime)
    host = config.metrics_listen.rpartition(":")[0]
    # stderr: stdout's first line is the "serving on" line that scripts and tests wait for
    print(f"moldau metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    return metrics_server


@dataclass(frozen=True, slots=True)
class _Storage:
    """The broker and the views opened over it."""

    broker: Broker
    coordinator: GroupCoordinator
    event_store: EventStore
    queues: QueueManager
    registry: ExchangeRegistry
    router: Router


def _open_storage(config: ServerConfig) -> _Storage:
    """Worker thread: recover the partitions, then replay every view from its topics."""
    settings = BrokerSettings(
        default_overrides=dict(config.topic_defaults) or None,
        max_topics=config.max_topics,
        max_partitions_per_topic=config.max_partitions_per_topic,
        max_partitions=config.max_partitions,
    )
    broker = Broker.open(config.data_dir, settings=settings)
    try:
        clock = SystemClock()
        coordinator = GroupCoordinator.open(broker, clock)
        event_store = EventStore.open(broker, clock=clock)
        queues = QueueManager.open(broker, clock)
        registry = ExchangeRegistry.open(broker, clock=clock)
        router = Router.open(broker, registry, clock=clock)
        return _Storage(broker, coordinator, event_store, queues, registry, router)
    except BaseException:
        broker.close()
        raise


def _install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT start a graceful shutdown (where the platform and thread allow)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals
            log.debug("cannot handle signal %s here; stop the server with its stop event", signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="moldau serve",
        description="Run the Moldau broker: a gRPC server over a local data directory.",
    )
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address to bind (default 127.0.0.1:7654; port 0 picks one)")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (default ./moldau-data)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (or MOLDAU_CONFIG)")
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="text lines (default) or one JSON object per line")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default off)")
    parser.add_argument("--tcp-listen", metavar="HOST:PORT",
                        help="also serve the RPCs over plain TCP frames, for latency "
                             "(docs/tcp-port.md; default off; port 0 picks one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``moldau serve``; returns the process exit code."""
    args = parse_args(argv)
    try:
        config = load_config(
            args.config,
            environ=os.environ,
            overrides={"listen": args.listen, "data_dir": args.data_dir,
                       "log_level": args.log_level, "log_format": args.log_format,
                       "metrics_listen": args.metrics_listen, "tcp_listen": args.tcp_listen},
        )
    except ConfigError as exc:
        print(f"moldau: {exc}", file=sys.stderr)
        return 2
    problem = config.exposure_problem()
    if problem is not None:
        print(f"moldau: {problem}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, sys.stderr)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
