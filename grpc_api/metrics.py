"""Prometheus metrics: an HTTP ``/metrics`` endpoint over the broker's state and the RPCs.

Two kinds of metrics:

- **Pulled at scrape time** by :class:`BrokerCollector`: per partition offsets, sizes,
  segment counts and the engine's own counters (:class:`~engine.log.stats.LogStats`: records
  and bytes in, bytes out, fsync latency), consumer-group lag, queue depth and outcomes,
  routing progress per exchange, disk usage and the free-space alert
  (:mod:`grpc_api.disk_space`). Nothing is updated
  on the hot path for these; a scrape walks the partitions (microseconds each).
- **Observed per call**: RPC latency and outcome by method and status code, recorded by the
  error-translation decorators every servicer method already goes through
  (:func:`grpc_api.errors.set_rpc_observer`), with label children cached so an observation is
  a dictionary lookup plus prometheus-client's own lock.

Each server has its own registry, so tests can run several servers in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.errors import EngineError
from engine.log.stats import FSYNC_BUCKETS_S
from grpc_api.config import parse_listen
from grpc_api.disk_space import DiskSpaceMonitor
from grpc_api.errors import set_rpc_observer
from grpc_api.runtime import Runtime

__all__ = ["BrokerCollector", "MetricsServer", "RpcMetrics", "start_metrics"]

log = logging.getLogger(__name__)

_RPC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)
#: Groups whose lag is reported; a broker with more exports the first ones by name.
MAX_GROUPS_WITH_LAG = 1000


class RpcMetrics:
    """Latency histogram and outcome counter per RPC method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._latency = Histogram(
            "moldau_rpc_duration_seconds", "Time to complete an RPC (streams: the whole call)",
            ["method"], registry=registry, buckets=_RPC_BUCKETS_S,
        )
        self._calls = Counter(
            "moldau_rpc", "RPCs by method and final status code", ["method", "code"],
            registry=registry,
        )
        self._latency_children: dict[str, Any] = {}
        self._call_children: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Count the call; ``seconds < 0`` (a refusal before the servicer) skips the latency."""
        calls = self._call_children.get((method, code))
        if calls is None:
            calls = self._call_children[(method, code)] = self._calls.labels(method, code)
        calls.inc()
        if seconds < 0:
            return
        latency = self._latency_children.get(method)
        if latency is None:
            latency = self._latency_children[method] = self._latency.labels(method)
        latency.observe(seconds)


class BrokerCollector(Collector):
    """Reads the broker's state when Prometheus scrapes."""

    def __init__(self, runtime: Runtime, disk: DiskSpaceMonitor | None = None) -> None:
        self._runtime = runtime
        self._disk = disk or DiskSpaceMonitor.from_config(runtime.config)

    def collect(self) -> Iterator[Metric]:
        try:
            broker = self._runtime.broker()
        except EngineError:
            return
        except Exception:  # NotReadyError: nothing to report while recovering or closing
            return
        yield from self._partitions(broker)
        yield from self._groups()
        yield from self._queues()
        yield from self._exchanges()
        yield from self._disk_space()

    def _disk_space(self) -> Iterator[Metric]:
        space = self._disk.check()
        if space is None:  # the file system cannot be read: report nothing rather than 0
            return
        yield GaugeMetricFamily("moldau_disk_free_bytes", "Free bytes on the data directory's "
                                "file system", value=space.free_bytes)
        yield GaugeMetricFamily("moldau_disk_total_bytes", "Size of the data directory's "
                                "file system", value=space.total_bytes)
        yield GaugeMetricFamily("moldau_disk_free_alert_threshold_bytes", "Free bytes below "
                                "which moldau_disk_low is 1 (0: the alert is off)",
                                value=space.threshold_bytes)
        yield GaugeMetricFamily("moldau_disk_low", "1 while free space is below the alert "
                                "threshold (disk_free_alert_bytes / disk_free_alert_percent)",
                                value=1 if space.low else 0)

    def _partitions(self, broker: Any) -> Iterator[Metric]:
        labels = ["topic", "partition"]
        gauges = {
            name: GaugeMetricFamily(f"moldau_partition_{name}", text, labels=labels)
            for name, text in (
                ("log_start_offset", "First offset still stored"),
                ("high_watermark", "Offset up to which records are readable (durable)"),
                ("log_end_offset", "Offset the next record gets"),
                ("size_bytes", "Bytes of segment files"),
                ("segments", "Segment files"),
                ("read_only", "1 when the partition refuses writes after a storage error"),
            )
        }
        counters = {
            name: CounterMetricFamily(f"moldau_partition_{name}", text, labels=labels)
            for name, text in (
                ("records_in", "Records appended since the broker started"),
                ("bytes_in", "Batch bytes appended since the broker started"),
                ("bytes_out", "Batch bytes read since the broker started"),
            )
        }
        fsync_buckets = [0] * (len(FSYNC_BUCKETS_S) + 1)
        fsync_total, fsyncs, topics, partitions, stored = 0.0, 0, 0, 0, 0
        for info in broker.list_topics(include_internal=True):
            topics += 1
            for number, plog in enumerate(broker.partitions(info.name)):
                partitions += 1
                key = [info.name, str(number)]
                stats = plog.stats
                gauges["log_start_offset"].add_metric(key, plog.log_start_offset)
                gauges["high_watermark"].add_metric(key, plog.high_watermark)
                gauges["log_end_offset"].add_metric(key, plog.log_end_offset)
                gauges["size_bytes"].add_metric(key, plog.size_bytes)
                gauges["segments"].add_metric(key, plog.segment_count)
                gauges["read_only"].add_metric(key, 1 if plog.read_only_reason else 0)
                counters["records_in"].add_metric(key, stats.appended_records)
                counters["bytes_in"].add_metric(key, stats.appended_bytes)
                counters["bytes_out"].add_metric(key, stats.read_bytes)
                stored += plog.size_bytes
                fsyncs += stats.fsyncs
                fsync_total += stats.fsync_seconds
                for i, count in enumerate(stats.fsync_buckets):
                    fsync_buckets[i] += count
        yield from gauges.values()
        yield from counters.values()
        cumulative, running = [], 0
        for bound, count in zip((*FSYNC_BUCKETS_S, float("inf")), fsync_buckets, strict=True):
            running += count
            cumulative.append((_bound(bound), running))
        yield HistogramMetricFamily(
            "moldau_fsync_duration_seconds", "Time of each segment fsync (group commit)",
            buckets=cumulative, sum_value=fsync_total,
        )
        yield GaugeMetricFamily("moldau_topics", "Topics, internal ones included", value=topics)
        yield GaugeMetricFamily("moldau_partitions", "Partitions of all topics", value=partitions)
        yield GaugeMetricFamily("moldau_stored_bytes", "Bytes of all segment files",
                                value=stored)

    def _groups(self) -> Iterator[Metric]:
        try:
            coordinator = self._runtime.coordinator()
        except Exception:  # not open yet
            return
        members = GaugeMetricFamily("moldau_group_members", "Live members", labels=["group"])
        lag = GaugeMetricFamily("moldau_group_lag_records", "Log end offset minus committed "
                                "offset", labels=["group", "topic", "partition"])
        lag_s = GaugeMetricFamily("moldau_group_lag_seconds", "Age of the oldest record not "
                                  "yet committed", labels=["group", "topic", "partition"])
        for listing in coordinator.list_groups()[:MAX_GROUPS_WITH_LAG]:
            members.add_metric([listing.group], listing.members)
            try:
                description = coordinator.describe(listing.group)
            except EngineError:  # deleted meanwhile
                continue
            for row in description.partitions:
                key = [listing.group, row.topic, str(row.partition)]
                if row.lag_records is not None:
                    lag.add_metric(key, row.lag_records)
                if row.lag_ms is not None:
                    lag_s.add_metric(key, row.lag_ms / 1000.0)
        yield members
        yield lag
        yield lag_s


    def _queues(self) -> Iterator[Metric]:
        try:
            manager = self._runtime.queues()
        except Exception:  # not open yet
            return
        labels = ["queue"]
        gauges = {
            name: GaugeMetricFamily(f"moldau_queue_{name}", text, labels=labels)
            for name, text in (
                ("depth", "Records not yet done: ready, in flight, waiting or not yet read"),
                ("in_flight", "Records leased to a consumer"),
                ("waiting_retry", "Records waiting for a retry's backoff to end"),
                ("scheduled", "Records waiting for their deliver-at time"),
            )
        }
        counters = {
            name: CounterMetricFamily(f"moldau_queue_{name}", text, labels=labels)
            for name, text in (
                ("delivered", "Deliveries, redeliveries included"),
                ("acked", "Records acknowledged"),
                ("redelivered", "Failed deliveries retried: nacks with retry plus expired "
                                "leases"),
                ("expired", "Leases that ran out"),
                ("dead_lettered", "Records copied to the dead-letter topic"),
                ("dead_letter_failures", "Dead-letter appends that failed (the records "
                                         "stayed queued)"),
            )
        }
        for config in manager.list_queues():
            try:
                description = manager.describe(config.name)
            except EngineError:  # deleted meanwhile
                continue
            key = [config.name]
            parts, counts = description.partitions, description.counters
            gauges["depth"].add_metric(key, description.backlog)
            gauges["in_flight"].add_metric(key, sum(p.in_flight for p in parts))
            gauges["waiting_retry"].add_metric(key, sum(p.waiting_retry for p in parts))
            gauges["scheduled"].add_metric(key, sum(p.scheduled for p in parts))
            counters["delivered"].add_metric(key, counts.delivered)
            counters["acked"].add_metric(key, counts.acked)
            counters["redelivered"].add_metric(key, counts.retried + counts.expired)
            counters["expired"].add_metric(key, counts.expired)
            counters["dead_lettered"].add_metric(key, counts.dead_lettered)
            counters["dead_letter_failures"].add_metric(key, counts.dead_letter_failures)
        yield from gauges.values()
        yield from counters.values()

    def _exchanges(self) -> Iterator[Metric]:
        try:
            _registry, router = self._runtime.routing()
        except Exception:  # not open yet
            return
        labels = ["exchange"]
        routed = CounterMetricFamily("moldau_exchange_routed", "Records that matched at least "
                                     "one binding (durable across restarts)", labels=labels)
        unroutable = CounterMetricFamily("moldau_exchange_unroutable", "Records that matched "
                                         "no binding (sent to the alternate topic if any)",
                                         labels=labels)
        lag = GaugeMetricFamily("moldau_exchange_lag_records", "Records of the exchange topic "
                                "not yet routed", labels=labels)
        paused = GaugeMetricFamily("moldau_exchange_paused", "1 while routing waits for an "
                                   "error's cause to go away (see DescribeExchange)",
                                   labels=labels)
        for status in router.describe_all():
            key = [status.exchange.name]
            routed.add_metric(key, status.routed)
            unroutable.add_metric(key, status.unroutable)
            lag.add_metric(key, status.lag)
            paused.add_metric(key, 1 if status.paused else 0)
        yield from (routed, unroutable, lag, paused)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class MetricsServer:
    """The ``/metrics`` HTTP server and the free-space checks that run beside it."""

    def __init__(self, http: Any, disk: DiskSpaceMonitor) -> None:
        self._http = http
        self.disk = disk
        self.server_port = int(http.server_port)

    def shutdown(self) -> None:
        self.disk.stop()
        self._http.shutdown()


def start_metrics(runtime: Runtime, listen: str) -> tuple[MetricsServer, int]:
    """Serve ``/metrics`` on ``listen`` (``HOST:PORT``; port 0 picks one) and start checking
    free disk space against the alert threshold.

    Returns:
        The server (call ``shutdown()`` to stop it) and the bound port.

    Raises:
        OSError: the address cannot be bound.
    """
    host, port = parse_listen(listen)
    disk = DiskSpaceMonitor.from_config(runtime.config)
    registry = CollectorRegistry()
    registry.register(BrokerCollector(runtime, disk))
    set_rpc_observer(RpcMetrics(registry).observe)
    http, _thread = start_http_server(port, addr=host, registry=registry)
    disk.start()
    return MetricsServer(http, disk), int(http.server_port)
