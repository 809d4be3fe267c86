"""``moldau bench``: produce, consume and end-to-end workloads against a running broker.

Method (what the numbers mean):

- **produce**: records go through the client's bulk path (``send_many``) in chunks. Latency is
  from the moment a chunk was *due* to its acknowledgement (all records of a chunk share it).
  With a target rate, "due" is the chunk's slot in the schedule, not the moment it was
  actually sent, so a stall delays the next chunks' sends without hiding their wait: this is
  the correction for coordinated omission (the same idea as wrk2). Without a target rate the
  producer runs flat out and latency is from ``send_many`` to the acknowledgement.
- **consume**: reads the topic from the log start up to its end (as of the start) or
  ``records``; latency is the time each ``poll_batches`` call took to return data.
- **e2e**: a consumer process tails the topic while this process produces at a fixed rate;
  each value starts with its due time (ns since the epoch), and latency is from due time to the
  consumer handing the record out. Producer and consumer are separate processes so they do
  not share an interpreter lock, as in a real deployment.

``producers``/``consumers`` above one run in separate processes (``spawn``); their histograms
are merged and throughput is total records over the span from the first start to the last end.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import queue
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from moldau._histogram import Histogram
from moldau.admin import Admin
from moldau.consumer import Consumer
from moldau.errors import MoldauError, TopicNotFoundError
from moldau.producer import Producer

__all__ = ["BenchConfig", "BenchResult", "run_bench"]

Workload = Literal["produce", "consume", "e2e"]
KeyMode = Literal["none", "random", "sequential"]
PERCENTILES = (50.0, 95.0, 99.0, 99.9)
_DUE = struct.Struct(">q")
_VALUE_POOL = 1024  # distinct random values cycled through, so compression sees real data


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One run's settings; see ``moldau bench --help`` for each."""

    workload: Workload
    server: str
    topic: str
    records: int = 1_000_000
    duration_s: float = 0.0
    record_size: int = 100
    rate: float = 0.0
    partitions: int = 1
    producers: int = 1
    consumers: int = 1
    batch_size: int = 256 * 1024
    linger_ms: float = 5.0
    codec: str = "none"
    durability: str | None = None
    keys: KeyMode = "none"
    key_count: int = 1000
    chunk_records: int = 1000
    timeout_s: float = 300.0
    tcp_address: str | None = None


@dataclass(slots=True)
class BenchResult:
    """What a run measured; :meth:`summary` is the ``--output json`` object."""

    config: BenchConfig
    records: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    histogram: Histogram = field(default_factory=Histogram)
    #: (seconds since start, records in that second, p99 ms in that second)
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    durability: str = ""
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        elapsed = max(self.elapsed_s, 1e-9)
        percentiles = self.histogram.percentiles_ms(PERCENTILES)
        settings = asdict(self.config)
        settings.pop("server")
        settings["transport"] = "tcp" if settings.pop("tcp_address") else "grpc"
        return {
            "workload": self.config.workload,
            "records": self.records,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 4),
            "records_per_sec": round(self.records / elapsed, 1),
            "mb_per_sec": round(self.bytes / elapsed / 1_000_000, 3),
            "p50_ms": round(percentiles[50.0], 3),
            "p95_ms": round(percentiles[95.0], 3),
            "p99_ms": round(percentiles[99.0], 3),
            "p999_ms": round(percentiles[99.9], 3),
            "max_ms": round(self.histogram.max_us / 1000.0, 3),
            "errors": self.errors,
            "durability": self.durability,
            "settings": settings,
        }


Progress = Callable[[int], None]


# ---------------------------------------------------------------------- shared helpers


def _values(config: BenchConfig, seed: int) -> list[bytes]:
    generator = random.Random(seed)
    return [generator.randbytes(config.record_size) for _ in range(_VALUE_POOL)]


def _keys(
    config: BenchConfig, start: int, count: int, generator: random.Random
) -> list[bytes | None] | None:
    if config.keys == "none":
        return None
    if config.keys == "sequential":
        return [b"key-%d" % ((start + i) % config.key_count) for i in range(count)]
    return [b"key-%d" % generator.randrange(config.key_count) for _ in range(count)]


def ensure_topic(config: BenchConfig) -> str:
    """Create the topic if missing; returns its durability setting."""
    with Admin(config.server) as admin:
        try:
            description = admin.describe_topic(config.topic)
        except TopicNotFoundError:
            configs = {"durability": config.durability} if config.durability else {}
            admin.create_topic(config.topic, config.partitions, configs)
            description = admin.describe_topic(config.topic)
        return description.configs.get("durability", "")


class _Timeline:
    """Per-second counts and p99s, for the progress line and ``--plot``."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.second = 0
        self.count = 0
        self.histogram = Histogram()
        self.points: list[tuple[float, int, float]] = []

    def add(self, now: float, latency_us: int, count: int) -> None:
        second = int(now - self.start)
        while second > self.second:
            self.points.append((float(self.second + 1), self.count,
                                self.histogram.percentile(99.0) / 1000.0))
            self.second += 1
            self.count = 0
            self.histogram = Histogram()
        self.count += count
        self.histogram.record(latency_us, count)


# ---------------------------------------------------------------------- produce


def _produce_part(
    config: BenchConfig, progress: Progress | None, share: int, seed: int, e2e: bool = False
) -> BenchResult:
    """Produce ``share`` records (or for ``duration_s``) from this process."""
    result = BenchResult(config)
    values = _values(config, seed)
    generator = random.Random(seed)
    done: deque[tuple[float, float, int, bool]] = deque()  # (due, acked, count, failed)
    chunk = config.chunk_records
    rate = config.rate
    if rate > 0:
        chunk = max(1, min(chunk, int(rate / 1000) or 1))  # about one chunk per millisecond
    with Producer(config.server, linger_ms=config.linger_ms, batch_size=config.batch_size,
                  codec=config.codec, tcp_address=config.tcp_address) as producer:
        producer.partition_count(config.topic)  # metadata before the clock starts
        start = time.monotonic()
        deadline = start + config.duration_s if config.duration_s > 0 else None
        timeline = _Timeline(start)
        sent = 0
        last_report = start

        def on_done(due: float, count: int, future: Any) -> None:
            done.append((due, time.monotonic(), count, future.exception() is not None))

        while (deadline is None and sent < share) or (deadline is not None
                                                       and time.monotonic() < deadline):
            count = chunk if deadline is not None else min(chunk, share - sent)
            now = time.monotonic()
            if rate > 0:
                due = start + sent / rate
                if due > now:
                    time.sleep(due - now)
            else:
                due = now
            offset = sent % _VALUE_POOL
            batch = [values[(offset + i) % _VALUE_POOL] for i in range(count)]
            if e2e:
                stamp = _DUE.pack(time.time_ns() - int((time.monotonic() - due) * 1e9))
                batch = [stamp + v[_DUE.size:] for v in batch]
            future = producer.send_many(config.topic, batch, _keys(config, sent, count,
                                                                   generator))
            future.add_done_callback(functools.partial(on_done, due, count))
            sent += count
            _drain(done, result, timeline)
            if progress is not None and now - last_report >= 0.5:
                progress(result.records)
                last_report = now
        producer.flush(config.timeout_s)
        while len(done) and result.records + result.errors < sent:
            _drain(done, result, timeline)
        _drain(done, result, timeline)
        result.elapsed_s = time.monotonic() - start
    result.bytes = result.records * config.record_size
    result.timeline = timeline.points
    if progress is not None:
        progress(result.records)
    return result


def _drain(
    done: deque[tuple[float, float, int, bool]], result: BenchResult, timeline: _Timeline
) -> None:
    while done:
        due, acked, count, failed = done.popleft()
        if failed:
            result.errors += count
            continue
        latency_us = int((acked - due) * 1e6)
        result.histogram.record(latency_us, count)
        result.records += count
        timeline.add(acked, latency_us, count)


# ---------------------------------------------------------------------- consume


def _consume_part(
    config: BenchConfig, progress: Progress | None, partitions: Sequence[int], limit: int
) -> BenchResult:
    """Read ``partitions`` from the log start until their end at the start, or ``limit``."""
    result = BenchResult(config)
    with Admin(config.server) as admin:
        ends = {o.partition: o.offset for o in admin.list_offsets(config.topic, "latest")}
        starts = {o.partition: o.offset for o in admin.list_offsets(config.topic, "earliest")}
    target = min(limit, sum(ends[p] - starts[p] for p in partitions))
    with Consumer(config.server, auto_offset_reset="earliest",
                  tcp_address=config.tcp_address) as consumer:
        consumer.assign([(config.topic, p) for p in partitions])
        consumer.seek_to_beginning()
        start = time.monotonic()
        timeline = _Timeline(start)
        last_report = start
        deadline = start + config.timeout_s
        while result.records < target and time.monotonic() < deadline:
            asked = time.monotonic()
            batches = consumer.poll_batches(timeout_ms=1000)
            now = time.monotonic()
            if not batches:
                continue
            latency_us = int((now - asked) * 1e6)
            count = 0
            size = 0
            for batch in batches:
                values = batch.values()
                count += len(values)
                size += sum(len(v) for v in values if v is not None)
            result.records += count
            result.bytes += size
            result.histogram.record(latency_us)
            timeline.add(now, latency_us, count)
            if progress is not None and now - last_report >= 0.5:
                progress(result.records)
                last_report = now
        result.elapsed_s = time.monotonic() - start
    result.timeline = timeline.points
    if progress is not None:
        progress(result.records)
    return result


# ---------------------------------------------------------------------- e2e


def _e2e_consumer(config: BenchConfig, expected: int, channel: Any) -> None:
    """Child process: tail the topic; report latency from each value's due time."""
    histogram = Histogram()
    received = 0
    with Consumer(config.server, auto_offset_reset="latest",
                  tcp_address=config.tcp_address) as consumer:
        consumer.assign_all(config.topic)
        consumer.seek_to_end()
        channel.put(("ready", None))
        deadline = time.monotonic() + config.timeout_s
        while received < expected and time.monotonic() < deadline:
            for batch in consumer.poll_batches(timeout_ms=200):
                now_ns = time.time_ns()
                lat = [(now_ns - _DUE.unpack_from(v)[0]) // 1000 for v in batch.values()
                       if v is not None and len(v) >= _DUE.size]
                histogram.record_many(lat)
                received += len(lat)
    channel.put(("done", (received, histogram.to_list())))


# ---------------------------------------------------------------------- processes


def _child(kind: str, config: BenchConfig, args: tuple[Any, ...], channel: Any) -> None:
    """Entry point of a worker process: run one part, send back its result."""
    try:
        def progress(n: int) -> None:
            channel.put(("progress", n))

        if kind == "produce":
            part = _produce_part(config, progress, *args)
        else:
            part = _consume_part(config, progress, *args)
        channel.put(("done", (part.records, part.bytes, part.elapsed_s, part.errors,
                              part.histogram.to_list(), part.timeline)))
    except Exception as exc:  # reported by the parent, which owns the exit code
        channel.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_parts(
    config: BenchConfig, kind: str, parts: list[tuple[Any, ...]], progress: Progress | None
) -> BenchResult:
    """Run ``parts`` in processes (one inline when there is only one) and merge them."""
    if len(parts) == 1:
        if kind == "produce":
            return _produce_part(config, progress, *parts[0])
        return _consume_part(config, progress, *parts[0])
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    processes = []
    for index, args in enumerate(parts):
        wrapped = _Tagged(channel, index)
        process = context.Process(target=_child, args=(kind, config, args, wrapped), daemon=True)
        processes.append(process)
    started = time.monotonic()
    for process in processes:
        process.start()
    counts = [0] * len(parts)
    merged = BenchResult(config)
    finished = 0
    try:
        while finished < len(parts):
            try:
                index, (tag, payload) = channel.get(timeout=config.timeout_s + 30)
            except queue.Empty:
                raise MoldauError("a benchmark process did not report in time") from None
            if tag == "progress":
                counts[index] = payload
                if progress is not None:
                    progress(sum(counts))
            elif tag == "error":
                raise MoldauError(f"benchmark process {index} failed: {payload}")
            else:
                records, size, _elapsed, errors, histogram, timeline = payload
                merged.records += records
                merged.bytes += size
                merged.errors += errors
                merged.histogram.merge(Histogram.from_list(histogram))
                merged.timeline.extend(tuple(point) for point in timeline)
                finished += 1
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    merged.elapsed_s = time.monotonic() - started
    merged.timeline = _merge_timeline(merged.timeline)
    return merged


class _Tagged:
    """A queue wrapper that tags every message with the worker's index."""

    def __init__(self, channel: Any, index: int) -> None:
        self.channel = channel
        self.index = index

    def put(self, item: Any) -> None:
        self.channel.put((self.index, item))


def _merge_timeline(points: list[tuple[float, int, float]]) -> list[tuple[float, int, float]]:
    merged: dict[float, tuple[int, float]] = {}
    for second, count, p99 in points:
        total, worst = merged.get(second, (0, 0.0))
        merged[second] = (total + count, max(worst, p99))
    return [(s, c, p) for s, (c, p) in sorted(merged.items())]


def _split(total: int, ways: int) -> list[int]:
    return [total // ways + (1 if i < total % ways else 0) for i in range(ways)]


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Run one workload and return its measurements.

    Raises:
        MoldauError: the broker refused or a worker failed.
        ValueError: contradictory settings.
    """
    if config.record_size < 1 or config.records < 0 or config.rate < 0:
        raise ValueError("record size must be >= 1 and records and rate >= 0")
    if config.workload == "e2e":
        return _run_e2e(config, progress)
    durability = ensure_topic(config) if config.workload == "produce" else ""
    if config.workload == "produce":
        shares = _split(config.records, config.producers)
        parts: list[tuple[Any, ...]] = [(share, os.getpid() + i) for i, share in
                                        enumerate(shares)]
        result = _run_parts(config, "produce", parts, progress)
    else:
        with Admin(config.server) as admin:
            count = admin.describe_topic(config.topic).partition_count
        ways = max(1, min(config.consumers, count))
        limit = config.records or 2**62
        limits = _split(limit, ways) if config.records else [limit] * ways
        parts = [(list(range(i, count, ways)), limits[i]) for i in range(ways)]
        result = _run_parts(config, "consume", parts, progress)
    result.durability = durability
    return result


def _run_e2e(config: BenchConfig, progress: Progress | None) -> BenchResult:
    if config.rate <= 0:
        raise ValueError("e2e needs a target rate (--rate), e.g. 10000 records/s")
    if config.record_size < _DUE.size:
        raise ValueError(f"e2e records carry a timestamp: --record-size must be >= {_DUE.size}")
    durability = ensure_topic(config)
    expected = int(config.rate * config.duration_s) if config.duration_s > 0 else config.records
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    consumer = context.Process(target=_e2e_consumer, args=(config, expected, channel),
                               daemon=True)
    consumer.start()
    try:
        tag, _ = channel.get(timeout=60)
        if tag != "ready":
            raise MoldauError("the e2e consumer did not start")
        exact = dataclasses.replace(config, duration_s=0.0)  # exactly what the consumer awaits
        produced = _produce_part(exact, progress, expected, os.getpid(), e2e=True)
        tag, payload = channel.get(timeout=config.timeout_s + 30)
    finally:
        consumer.join(timeout=10)
        if consumer.is_alive():
            consumer.kill()
    received, histogram = payload
    return BenchResult(config, records=received, bytes=received * config.record_size,
                         elapsed_s=produced.elapsed_s, histogram=Histogram.from_list(histogram),
                         timeline=produced.timeline, durability=durability,
                         errors=produced.errors + max(0, produced.records - received))

