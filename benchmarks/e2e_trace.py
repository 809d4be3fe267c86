"""Where one record's end-to-end time goes: a staged trace of Moldau's e2e path.

The peer script's e2e workload gives one number per run; this splits it. A producer process
sends ``--records-per-batch`` records every millisecond on the TCP port (``linger_ms=0``), a
consumer process polls them, and the broker runs in a third process with timestamps taken at
each hop. Every stamp is ``time.perf_counter_ns()``, which on Linux is CLOCK_MONOTONIC and so
comparable across processes. Stages, per batch:

    send -> recv            the producer's send until the broker's data_received
    recv -> append          frame, request parse, plan, lane, validation: until the write
    append -> fsync start   (fsync topics) the hand-off to whoever fsyncs
    fsync                   the fdatasync itself
    fsync end -> push       until the push to the consumer is written (async: append -> push)
    push -> client put      the chunk is in the client (read by the waiting poll's thread)
    put -> poll return      ``poll_batches`` returns it

``--detail`` adds broker steps inside the two broker stages (indented rows): the loop turn
until the produce handler has the frame's bytes, its parse and flow control, planning until
the write; then the write until the high watermark moves, until the subscriber's read
starts (within the append's loop turn when the push is written directly), the read, and the
push's framing. On an fsync topic it also says how many fsyncs ran on the event loop.

The broker's hooks wrap private methods (``OsLogFile``, the TCP port's connection), so this
is a measuring tool that may need updating when those move, not a test. Usage::

    .venv/bin/python benchmarks/e2e_trace.py --durability fsync --seconds 10 [--detail]
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAMP = struct.Struct(">q")
TOPIC = "e2e-trace"


def broker_child(args: list[str]) -> int:
    """Run the broker in this process with timestamps at each hop; dump them at exit."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.path.insert(0, str(REPO))
    from engine.log import fileio
    from grpc_api import server, tcp_port

    trace: dict[str, list[Any]] = {"append": [], "fsync": [], "recv": [], "send": [],
                                   "fsync_on_loop": []}
    loop_thread = threading.get_ident()  # server.main runs the event loop in this thread
    now = time.perf_counter_ns
    append, fsync = fileio.OsLogFile.append, fileio.OsLogFile.fsync
    received, send = tcp_port._Connection.data_received, tcp_port._Connection.send
    write_now = tcp_port._Connection.write_now

    def traced_append(self: Any, data: Any) -> int:
        if TOPIC in str(self.path):
            trace["append"].append(now())
        return append(self, data)

    def traced_fsync(self: Any) -> None:
        started = now()
        fsync(self)
        if TOPIC in str(self.path):
            trace["fsync"].append((started, now()))
            trace["fsync_on_loop"].append(threading.get_ident() == loop_thread)

    def traced_received(self: Any, data: bytes) -> None:
        trace["recv"].append((now(), id(self)))
        received(self, data)

    async def traced_send(self: Any, call_id: int, kind: int, payload: bytes) -> None:
        trace["send"].append((now(), len(payload), id(self)))
        await send(self, call_id, kind, payload)

    def traced_write_now(self: Any, call_id: int, kind: int, payload: bytes) -> bool:
        stamp = now()
        written = write_now(self, call_id, kind, payload)
        if written:
            trace["send"].append((stamp, len(payload), id(self)))
        return written

    if os.environ.get("MOLDAU_E2E_TRACE_DETAIL") == "1":
        _trace_detail(trace)
    fileio.OsLogFile.append = traced_append  # type: ignore[method-assign]
    fileio.OsLogFile.fsync = traced_fsync  # type: ignore[method-assign]
    tcp_port._Connection.data_received = traced_received  # type: ignore[method-assign]
    tcp_port._Connection.send = traced_send  # type: ignore[method-assign]
    tcp_port._Connection.write_now = traced_write_now  # type: ignore[method-assign]
    output = Path(args.pop(0))
    sys.argv = ["moldau-trace-broker", *args]
    code = server.main()
    output.write_text(json.dumps(trace))
    return code


def _trace_detail(trace: dict[str, list[Any]]) -> None:
    """Stamps inside the broker's two stages (``--detail``)."""
    from engine.log import partition_log
    from grpc_api import produce, runtime, tcp_port

    now = time.perf_counter_ns
    for name in ("request", "plan", "high_watermark", "read", "read_done"):
        trace[name] = []
    next_request, plan = tcp_port._Call.next_request, produce.ProduceServicer._plan
    on_append, read = runtime.Watch._on_append, partition_log.PartitionLog.read

    async def traced_next_request(self: Any) -> bytes | None:
        data = await next_request(self)
        trace["request"].append((now(), id(self.connection)))
        return data

    def traced_plan(self: Any, request: Any) -> Any:
        trace["plan"].append(now())
        return plan(self, request)

    def traced_on_append(self: Any) -> None:
        trace["high_watermark"].append(now())
        on_append(self)

    def traced_read(self: Any, offset: int, max_bytes: int) -> Any:
        if TOPIC not in str(self.directory):
            return read(self, offset, max_bytes)
        trace["read"].append(now())
        result = read(self, offset, max_bytes)
        trace["read_done"].append(now())
        return result

    tcp_port._Call.next_request = traced_next_request  # type: ignore[method-assign]
    produce.ProduceServicer._plan = traced_plan  # type: ignore[method-assign]
    runtime.Watch._on_append = traced_on_append  # type: ignore[method-assign]
    partition_log.PartitionLog.read = traced_read  # type: ignore[method-assign]


def produce(address: str, tcp: str, batches: int, per_batch: int, start: Any,
            out: Path) -> None:
    from moldau import Producer

    sent: list[int] = []
    with Producer(address, linger_ms=0, tcp_address=tcp) as producer:
        producer.partition_count(TOPIC)
        start.wait()
        began = time.monotonic()
        for n in range(batches):
            delay = began + n / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = time.perf_counter_ns()
            producer.send_many(TOPIC, [STAMP.pack(stamp) + b"x" * 92] * per_batch, partition=0)
            sent.append(stamp)
        producer.flush(60)
    out.write_text(json.dumps(sent))


def consume(address: str, tcp: str, records: int, start: Any, out: Path) -> None:
    from moldau import Consumer, _fetcher

    puts: list[int] = []
    put = _fetcher.ChunkBuffer.put

    def traced_put(self: Any, chunk: Any) -> None:
        puts.append(time.perf_counter_ns())
        put(self, chunk)

    _fetcher.ChunkBuffer.put = traced_put  # type: ignore[method-assign]
    got: list[tuple[int, int]] = []
    received = 0
    with Consumer(address, auto_offset_reset="earliest", tcp_address=tcp) as consumer:
        consumer.assign([(TOPIC, 0)])
        consumer.seek_to_beginning()
        start.set()
        give_up = time.monotonic() + 60 + records / 1000
        while received < records and time.monotonic() < give_up:
            for batch in consumer.poll_batches(timeout_ms=100):
                polled = time.perf_counter_ns()
                values = batch.values()
                got.append((STAMP.unpack_from(values[0])[0], polled))
                received += len(values)
    out.write_text(json.dumps({"got": got, "puts": puts}))


def _next(times: list[int], after: int) -> int | None:
    i = bisect.bisect_left(times, after)
    return times[i] if i < len(times) else None


def stages(trace: dict[str, Any], polled: dict[str, Any], warmup: int) -> dict[str, list[int]]:
    """Per batch, the time in each stage (ns), matched by following each batch's stamps."""
    appends = trace["append"]
    fsyncs = trace["fsync"]
    fsync_starts = [started for started, _ in fsyncs]
    by_connection: dict[int, list[int]] = {}
    for _, size, connection in trace["send"]:
        by_connection.setdefault(connection, []).append(size)
    # the consumer's connection carries the pushes: its frames are the largest on average
    pushes_on = max(by_connection, key=lambda c: sum(by_connection[c]) / len(by_connection[c]))
    pushes = [t for t, _, c in trace["send"] if c == pushes_on]
    counts: dict[int, int] = {}
    for _, connection in trace["recv"]:
        counts[connection] = counts.get(connection, 0) + 1
    producer_on = max(counts, key=lambda c: counts[c])
    receipts = [t for t, c in trace["recv"] if c == producer_on]
    requests = [t for t, c in trace.get("request", []) if c == producer_on]
    out: dict[str, list[int]] = {}

    def add(name: str, value: int) -> None:
        out.setdefault(name, []).append(value)

    for stamp, returned in polled["got"][warmup:]:
        recv = _next(receipts, stamp)
        append = _next(appends, recv) if recv is not None else None
        if recv is None or append is None:
            continue
        ready = append
        if fsyncs:
            i = bisect.bisect_left(fsync_starts, append)
            if i >= len(fsyncs):
                continue
            started, ended = fsyncs[i]
            ready = ended
        push = _next(pushes, ready)
        put = _next(polled["puts"], push) if push is not None else None
        if push is None or put is None or put > returned:
            continue
        add("send -> recv", recv - stamp)
        add("recv -> append", append - recv)
        if "request" in trace:
            _detail_produce(trace, requests, recv, append, add)
        if fsyncs:
            add("append -> fsync start", started - append)
            add("fsync", ended - started)
            add("fsync end -> push", push - ended)
        else:
            add("append -> push", push - append)
        if "request" in trace:
            _detail_push(trace, ready, push, add)
        add("push -> client put", put - push)
        add("put -> poll return", returned - put)
        add("total", returned - stamp)
    return out


def _detail_produce(trace: dict[str, Any], requests: list[int], recv: int, append: int,
                    add: Any) -> None:
    request = _next(requests, recv)
    plan = _next(trace["plan"], request) if request is not None else None
    if request is None or plan is None or plan > append:
        return
    add("  recv -> the handler has the bytes", request - recv)
    add("  -> parsed, flow control (plan starts)", plan - request)
    add("  plan -> append", append - plan)


def _detail_push(trace: dict[str, Any], ready: int, push: int, add: Any) -> None:
    moved = _next(trace["high_watermark"], ready)
    read = _next(trace["read"], moved) if moved is not None else None
    read_done = _next(trace["read_done"], read) if read is not None else None
    if moved is None or read is None or read_done is None or read_done > push:
        return
    add("  -> high watermark moves", moved - ready)
    add("  -> the subscriber's read starts", read - moved)
    add("  read", read_done - read)
    add("  read done -> push", push - read_done)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--broker-child":
        return broker_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durability", choices=["fsync", "async"], default="fsync")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records-per-batch", type=int, default=10)
    parser.add_argument("--warmup-batches", type=int, default=1000)
    parser.add_argument("--detail", action="store_true",
                        help="also time the steps inside the broker's two stages")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="another topic config, e.g. segment.preallocate.bytes=0")
    options = parser.parse_args()
    sys.path.insert(0, str(REPO / "clients" / "python"))
    from moldau import Admin

    work = Path(tempfile.mkdtemp(prefix="moldau-e2e-trace-"))
    batches = int(options.seconds * 1000)
    broker = subprocess.Popen(
        [sys.executable, __file__, "--broker-child", str(work / "broker.json"),
         "--listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0",
         "--data-dir", str(work / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "MOLDAU_E2E_TRACE_DETAIL": "1" if options.detail else "0"},
    )
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        found = re.search(r"(127\.0\.0\.1:\d+)", line), re.search(r"; tcp: (\S+)\)", line)
        if found[0] is None or found[1] is None:
            raise SystemExit(f"the broker did not start: {line!r}")
        address, tcp = found[0].group(1), found[1].group(1)
        with Admin(address) as admin:
            configs = dict(item.split("=", 1) for item in options.config)
            admin.create_topic(TOPIC, 1, {"durability": options.durability, **configs})
        start = multiprocessing.Event()
        consumer = multiprocessing.Process(target=consume, args=(
            address, tcp, batches * options.records_per_batch, start, work / "consumer.json"))
        producer = multiprocessing.Process(target=produce, args=(
            address, tcp, batches, options.records_per_batch, start, work / "producer.json"))
        consumer.start()
        producer.start()
        producer.join()
        consumer.join()
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)
    trace = json.loads((work / "broker.json").read_text())
    if options.durability == "async":
        trace["fsync"] = []
    polled = json.loads((work / "consumer.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    print(f"{options.durability} topic, {options.records_per_batch} records/ms, "
          f"{options.seconds:g} s, first {options.warmup_batches} batches left out")
    on_loop = trace.get("fsync_on_loop", [])
    if on_loop and options.durability == "fsync":
        print(f"{sum(on_loop)} of {len(on_loop)} fsyncs ran on the event loop, the rest on "
              "workers")
    print("| stage | p50 µs | p90 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for name, values in stages(trace, polled, options.warmup_batches).items():
        values.sort()
        n = len(values)
        p50, p90, p99 = (values[int(n * q)] / 1000 for q in (0.5, 0.9, 0.99))
        print(f"| {name} | {p50:.0f} | {p90:.0f} | {p99:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
