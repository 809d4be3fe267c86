"""``moldau bench produce|consume|e2e``: the command line of :mod:`moldau._bench`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from moldau._bench import BenchConfig, BenchResult, run_bench
from moldau._cli_output import format_table
from moldau._runtime import resolve_server

__all__ = ["add_bench_command", "run_bench_command"]

_EXAMPLES = """  moldau bench produce --topic bench --records 1000000 --record-size 100
  moldau bench consume --topic bench --records 1000000
  moldau bench produce --topic bench6 --partitions 6 --producers 3 --durability async
  moldau bench e2e --topic lat --rate 10000 --duration 30 --output json
  moldau bench produce --topic bench --rate 50000 --duration 20 --plot produce.png"""


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    return parse


def add_bench_command(
    commands: argparse._SubParsersAction[Any], command: Callable[..., argparse.ArgumentParser]
) -> None:
    """Add ``bench`` with its three workloads to the ``moldau`` parser."""
    bench = command(commands, "bench", "measure produce, consume and end-to-end throughput "
                    "and latency against a running broker", _EXAMPLES)
    workloads = bench.add_subparsers(dest="workload", metavar="WORKLOAD",
                                     parser_class=type(bench))
    workloads.required = True
    helps = {
        "produce": "write records as fast as possible (or at --rate) and time the acks",
        "consume": "read a topic from the beginning and time it",
        "e2e": "produce at --rate while another process consumes; latency is due time to "
               "delivery",
    }
    for name, help_text in helps.items():
        parser = command(workloads, name, help_text, _EXAMPLES)
        _add_options(parser, name)


def _add_options(parser: argparse.ArgumentParser, workload: str) -> None:
    number, real = _positive(int), _positive(float)
    parser.add_argument("--server", metavar="HOST:PORT", default=None,
                        help="broker address (default $MOLDAU_SERVER, else 127.0.0.1:7654)")
    parser.add_argument("--tcp", metavar="HOST:PORT", default=None, dest="tcp_address",
                        help="the broker's TCP port (serve --tcp-listen): records travel "
                        "there instead of over gRPC (docs/tcp-port.md)")
    parser.add_argument("--topic", required=True, help="topic (created if missing)")
    parser.add_argument("--records", type=number, default=1_000_000, metavar="N",
                        help="records to write/read (default 1000000; consume: 0 = all)")
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.add_argument("--no-progress", action="store_true",
                        help="no live progress line on stderr")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="chart of throughput and p99 per second (needs matplotlib)")
    parser.add_argument("--timeout", type=real, default=300.0, metavar="S",
                        help="give up after this many seconds (default 300)")
    if workload == "consume":
        parser.add_argument("--consumers", type=number, default=1, metavar="N",
                            help="consumer processes, partitions split between them")
        return
    parser.add_argument("--record-size", type=number, default=100, metavar="BYTES")
    parser.add_argument("--duration", type=real, default=0.0, metavar="S",
                        help="run for this long instead of --records (e2e: required)")
    parser.add_argument("--rate", type=real, default=10_000.0 if workload == "e2e" else 0.0,
                        metavar="RECORDS/S",
                        help="target rate over all producers; 0 = unlimited "
                        "(latency is then corrected for coordinated omission)")
    parser.add_argument("--partitions", type=number, default=1, metavar="N",
                        help="partitions when the topic is created (default 1)")
    parser.add_argument("--producers", type=number, default=1, metavar="N",
                        help="producer processes (default 1)")
    parser.add_argument("--batch-size", type=number, default=256 * 1024, metavar="BYTES")
    parser.add_argument("--linger-ms", type=real, default=0.0 if workload == "e2e" else 5.0)
    parser.add_argument("--compression", choices=("none", "gzip", "snappy", "lz4", "zstd"),
                        default="none")
    parser.add_argument("--durability", choices=("fsync", "async"),
                        help="durability of a topic this creates: fsync before ack (the "
                        "default) or async")
    parser.add_argument("--keys", choices=("none", "random", "sequential"), default="none",
                        help="record keys (default none: batches go round-robin)")
    parser.add_argument("--key-count", type=number, default=1000, metavar="N")


def run_bench_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the parsed ``bench`` command; returns the exit code."""
    workload = args.workload
    config = BenchConfig(
        workload=workload,
        server=resolve_server(args.server),
        topic=args.topic,
        records=args.records,
        duration_s=getattr(args, "duration", 0.0),
        record_size=getattr(args, "record_size", 100),
        rate=getattr(args, "rate", 0.0),
        partitions=max(1, getattr(args, "partitions", 1)),
        producers=max(1, getattr(args, "producers", 1)),
        consumers=max(1, getattr(args, "consumers", 1)),
        batch_size=getattr(args, "batch_size", 256 * 1024),
        linger_ms=getattr(args, "linger_ms", 5.0),
        codec=getattr(args, "compression", "none"),
        durability=getattr(args, "durability", None),
        keys=getattr(args, "keys", "none"),
        key_count=max(1, getattr(args, "key_count", 1000)),
        timeout_s=args.timeout,
        tcp_address=args.tcp_address,
    )
    progress = None if args.no_progress or not err.isatty() else _progress_line(err, config)
    try:
        if workload == "e2e" and config.duration_s <= 0 and config.records <= 0:
            raise ValueError("e2e needs --duration (or --records)")
        result = run_bench(config, progress)
    except ValueError as exc:
        err.write(f"moldau: error: {exc}\n")
        return 1
    if progress is not None:
        err.write("\n")
    summary = result.summary()
    if args.output == "json":
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(_table(summary) + "\n")
    if args.plot:
        _plot(result, args.plot)
        err.write(f"wrote {args.plot}\n")
    return 0 if result.errors == 0 else 2


def _progress_line(err: TextIO, config: BenchConfig) -> Callable[[int], None]:
    started = time.monotonic()
    goal = f" / {config.records:,}" if config.records and config.duration_s <= 0 else ""

    def show(done: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        err.write(f"\r{config.workload}: {done:,}{goal} records  {done / elapsed:,.0f} rec/s  "
                  f"{elapsed:.1f} s ")
        err.flush()

    return show


def _table(summary: dict[str, Any]) -> str:
    rows = [
        ("records", f"{summary['records']:,}"),
        ("elapsed", f"{summary['elapsed_s']:.3f} s"),
        ("throughput", f"{summary['records_per_sec']:,.0f} records/s  "
                       f"{summary['mb_per_sec']:.1f} MB/s"),
        ("latency p50", f"{summary['p50_ms']:.3f} ms"),
        ("latency p95", f"{summary['p95_ms']:.3f} ms"),
        ("latency p99", f"{summary['p99_ms']:.3f} ms"),
        ("latency p99.9", f"{summary['p999_ms']:.3f} ms"),
        ("latency max", f"{summary['max_ms']:.3f} ms"),
        ("errors", str(summary["errors"])),
    ]
    if summary["durability"]:
        rows.append(("durability", summary["durability"]))
    return format_table(("measure", summary["workload"]), rows)


def _plot(result: BenchResult, path: str) -> None:
    try:
        import matplotlib  # noqa: PLC0415  (optional dependency, only for --plot)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("moldau: --plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return
    seconds = [point[0] for point in result.timeline]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.plot(seconds, [point[1] for point in result.timeline])
    top.set_ylabel("records/s")
    top.set_title(f"moldau bench {result.config.workload} ({result.config.topic})")
    bottom.plot(seconds, [point[2] for point in result.timeline], color="tab:red")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
