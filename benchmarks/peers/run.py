"""Moldau side by side with Kafka, NATS JetStream, Redis Streams and RabbitMQ on this machine.

    .venv/bin/python benchmarks/peers/run.py                 # everything, 3 repetitions
    .venv/bin/python benchmarks/peers/run.py --quick         # smoke: Moldau only, tiny counts
    .venv/bin/python benchmarks/peers/run.py --systems moldau,kafka --repetitions 1

Every system is started on loopback by this script (free ports, a temporary data directory),
driven through its usual Python client from worker processes, and stopped again, also on
Ctrl-C. Repetitions are interleaved: each repetition starts every system in turn, in an
order rotated by one per repetition, and medians over repetitions are reported. Output: a
table on stdout, ``peers.json`` and ``peers.png`` in ``--output-dir``. See docs/peers.md for
the method and what the numbers do and do not show.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from common import (
    REPO,
    E2EJob,
    Histogram,
    Job,
    Part,
    PeerClient,
    PeerServer,
    PeerUnavailable,
    Variant,
)
from workers import WorkerError, run_parts, span

SYSTEMS = ("moldau", "kafka", "nats", "redis", "rabbitmq")
# pip packages per system: (module to import, distribution to install)
_PIP = {
    "kafka": [("confluent_kafka", "confluent-kafka")],
    "nats": [("nats", "nats-py")],
    "redis": [("redis", "redis"), ("hiredis", "hiredis")],
    "rabbitmq": [("pika", "pika")],
}


@dataclass(frozen=True, slots=True)
class Settings:
    records: int
    kib_records: int
    rate: float
    e2e_seconds: float
    max_seconds: float
    repetitions: int
    warmup_seconds: float = 2.0
    only: frozenset[str] = frozenset()  # workload groups to run; empty: all

    @property
    def workloads(self) -> list[str]:
        return ["produce 100 B", "consume 100 B", f"e2e {self.rate:g}/s",
                "produce 1 KiB", "consume 1 KiB", "produce 3p/6p", "consume 3c/6p"]


def _server(system: str) -> PeerServer:
    if system == "moldau":
        from moldau_peer import MoldauServer
        return MoldauServer()
    if system == "kafka":
        from kafka_peer import KafkaServer
        return KafkaServer()
    if system == "nats":
        from nats_peer import NatsServer
        return NatsServer()
    if system == "redis":
        from redis_peer import RedisServer
        return RedisServer()
    from rabbitmq_peer import RabbitServer
    return RabbitServer()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- installing


def ensure_pip(systems: list[str], chart: bool) -> None:
    """Install the missing client libraries into the running interpreter's environment."""
    wanted = [pair for s in systems for pair in _PIP.get(s, [])]
    if chart:
        wanted.append(("matplotlib", "matplotlib"))
    missing = [dist for module, dist in wanted if importlib.util.find_spec(module) is None]
    if missing:
        _say(f"installing {' '.join(missing)} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=False)
        importlib.invalidate_caches()


# ---------------------------------------------------------------------- one measurement


def _row(server: PeerServer, variant: Variant, workload: str, rep: int, parts: list[Part],
         elapsed: float | None = None) -> dict[str, Any]:
    records = sum(p.records for p in parts)
    size = sum(p.bytes for p in parts)
    seconds = elapsed if elapsed is not None else span(parts)
    row: dict[str, Any] = {
        "system": server.system, "variant": variant.name, "durability": variant.durability,
        "client": server.client_library, "workload": workload, "repetition": rep,
        "records": records, "bytes": size, "seconds": round(seconds, 4),
        "records_per_sec": round(records / max(seconds, 1e-9), 1),
        "mb_per_sec": round(size / max(seconds, 1e-9) / 1e6, 3),
        "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None,
    }
    histograms = [Histogram.from_list(p.histogram) for p in parts if p.histogram]
    if histograms:
        merged = Histogram()
        for histogram in histograms:
            merged.merge(histogram)
        row.update(p50_ms=round(merged.percentile(50) / 1000, 3),
                   p99_ms=round(merged.percentile(99) / 1000, 3),
                   p999_ms=round(merged.percentile(99.9) / 1000, 3),
                   max_ms=round(merged.max_us / 1000, 3))
    return row


def _throughput(client: PeerClient, variant: Variant, topic: str, partitions: int,
                workers: int, records: int, size: int, settings: Settings
                ) -> tuple[list[Part], list[Part]]:
    """Produce ``records`` into a new topic with ``workers`` processes, then read them back."""
    client.create_topic(topic, partitions, variant)
    shares = [tuple(range(i, partitions, workers)) for i in range(workers)]
    counts = [records // workers + (1 if i < records % workers else 0) for i in range(workers)]
    timeout = settings.max_seconds + 180
    produced = run_parts(client, [
        ("produce", Job(topic, shares[i], counts[i], size, variant, settings.max_seconds))
        for i in range(workers)], timeout)
    per_partition: dict[int, int] = {}
    for part in produced:
        for partition, count in part.per_partition.items():
            per_partition[partition] = per_partition.get(partition, 0) + count
    consumed = run_parts(client, [
        ("consume", Job(topic, shares[i], sum(per_partition.get(p, 0) for p in shares[i]),
                        size, variant, settings.max_seconds))
        for i in range(workers)], timeout)
    return produced, consumed


def run_variant(server: PeerServer, client: PeerClient, variant: Variant, rep: int,
                settings: Settings) -> list[dict[str, Any]]:
    """All workloads of one system variant, in a fixed order."""
    rows: list[dict[str, Any]] = []
    names = settings.workloads
    tag = f"{variant.name.replace('-', '_')}_r{rep}_{int(time.time()) % 100000}"

    def attempt(label: str, action: Any) -> None:
        started = time.monotonic()
        try:
            new_rows = action()
        except (WorkerError, PeerUnavailable, OSError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()
            _say(f"  {server.system} {variant.name} {label}: FAILED {first[-1] if first else exc}")
            rows.append({"system": server.system, "variant": variant.name,
                         "workload": label, "repetition": rep, "error": str(exc)[-2000:]})
            return
        rows.extend(new_rows)
        summary = ", ".join(f"{r['workload']} {r['records_per_sec']:,.0f}/s"
                            + (f" p99 {r['p99_ms']} ms" if r["p99_ms"] is not None else "")
                            for r in new_rows)
        _say(f"  {server.system} {variant.name}: {summary} "
             f"({time.monotonic() - started:.0f} s)")

    def small() -> list[dict[str, Any]]:
        produced, consumed = _throughput(client, variant, f"p100_{tag}", 1, 1,
                                         settings.records, 100, settings)
        return [_row(server, variant, names[0], rep, produced),
                _row(server, variant, names[1], rep, consumed)]

    def e2e() -> list[dict[str, Any]]:
        topic = f"e2e_{tag}"
        client.create_topic(topic, 1, variant)
        span = settings.warmup_seconds + settings.e2e_seconds
        expected = int(settings.rate * span)
        job = E2EJob(topic, settings.rate, expected, 100, variant, span + 30,
                     settings.warmup_seconds)
        consumer, producer = run_parts(client, [("e2e_consume", job), ("e2e_produce", job)],
                                       span + 90)
        row = _row(server, variant, names[2], rep, [consumer],
                   elapsed=producer.ended - producer.started)
        row["lost"] = expected - consumer.records
        return [row]

    def kib() -> list[dict[str, Any]]:
        produced, consumed = _throughput(client, variant, f"p1k_{tag}", 1, 1,
                                         settings.kib_records, 1024, settings)
        return [_row(server, variant, names[3], rep, produced),
                _row(server, variant, names[4], rep, consumed)]

    def multi() -> list[dict[str, Any]]:
        produced, consumed = _throughput(client, variant, f"m6_{tag}", 6, 3,
                                         settings.records, 100, settings)
        return [_row(server, variant, names[5], rep, produced),
                _row(server, variant, names[6], rep, consumed)]

    for group, action in (("100b", small), ("e2e", e2e), ("1kib", kib), ("multi", multi)):
        if not settings.only or group in settings.only:
            attempt(group, action)
    return rows


def run_system(server: PeerServer, variants: list[Variant], rep: int, settings: Settings,
               workdir: Path) -> list[dict[str, Any]]:
    """Start one system, run every variant, stop it (whatever happens)."""
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        client = server.start(workdir)
        _say(f"{server.system}: started in {time.monotonic() - started:.1f} s (repetition {rep})")
        for variant in variants:
            server.prepare(client, variant)
            rows.extend(run_variant(server, client, variant, rep, settings))
    except (PeerUnavailable, OSError) as exc:  # OSError: e.g. a binary not installed
        _say(f"{server.system}: skipped: {exc}")
        rows.append({"system": server.system, "variant": "-", "workload": "start",
                     "repetition": rep, "error": str(exc)})
    finally:
        server.stop()
    return rows


# ---------------------------------------------------------------------- main


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    with contextlib.suppress(OSError, IndexError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {"cpu_count": os.cpu_count(), "cpu": model, "memory": memory,
            "kernel": platform.release(), "python": platform.python_version()}


def _versions(systems: list[str]) -> dict[str, str]:
    from importlib import metadata

    versions: dict[str, str] = {}
    for dist in ("moldau", "grpcio", "confluent-kafka", "nats-py", "redis", "hiredis", "pika"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    for package in ("nats-server", "redis-server", "rabbitmq-server", "erlang-base"):
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout:
            versions[package] = done.stdout
    if "kafka" in systems:
        from kafka_peer import LIBS
        jars = sorted(LIBS.glob("kafka_2.13-*.jar"))
        if jars:
            versions["kafka"] = jars[0].stem.removeprefix("kafka_2.13-")
    java = shutil.which("java")
    if java:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        versions["java"] = (done.stderr.splitlines() or [""])[0]
    return versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--variants", default="",
                        help="only these variants, e.g. fsync,async,aof-off,quorum")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="100-byte records per produce workload (default 1,000,000)")
    parser.add_argument("--kib-records", type=int, default=250_000,
                        help="1 KiB records per produce workload (default 250,000)")
    parser.add_argument("--rate", type=float, default=10_000, help="e2e records/s")
    parser.add_argument("--e2e-seconds", type=float, default=30.0,
                        help="measured e2e window (after the warm-up)")
    parser.add_argument("--warmup-seconds", type=float, default=2.0,
                        help="e2e traffic sent at the same rate before the measured window and "
                             "left out of the latencies (fresh processes are slow at first)")
    parser.add_argument("--workloads", default="",
                        help="comma-separated subset of 100b,e2e,1kib,multi (default: all)")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="stop a produce or consume run after this long and rate it on "
                             "what it did (slow systems); default 20")
    parser.add_argument("--output-dir", type=Path,
                        default=REPO / "benchmarks" / "peers" / "results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: Moldau only, tiny counts, one repetition")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install missing packages (skip those systems instead)")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data")
    args = parser.parse_args(argv)
    if args.quick:
        args.systems, args.repetitions = "moldau", 1
        args.records, args.kib_records = 20_000, 5_000
        args.rate, args.e2e_seconds, args.max_seconds = 2_000.0, 1.0, 10.0
        args.warmup_seconds = 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        _say(f"unknown systems: {', '.join(unknown)} (choose from {', '.join(SYSTEMS)})")
        return 2
    only = frozenset(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown_workloads = sorted(only - {"100b", "e2e", "1kib", "multi"})
    if unknown_workloads:
        _say(f"unknown workloads: {', '.join(unknown_workloads)} (choose from 100b,e2e,1kib,multi)")
        return 2
    settings = Settings(args.records, args.kib_records, args.rate, args.e2e_seconds,
                        args.max_seconds, args.repetitions, args.warmup_seconds, only)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C
    if not args.quick and not args.no_install:
        ensure_pip(systems, chart=True)
    servers: dict[str, PeerServer] = {}
    variants: dict[str, list[Variant]] = {}
    runs: list[dict[str, Any]] = []
    chosen = {v for v in args.variants.split(",") if v}
    for system in systems:
        try:
            server = _server(system)
            if not args.no_install or system == "moldau":
                server.ensure_installed()
        except (PeerUnavailable, ImportError, OSError, subprocess.SubprocessError) as exc:
            _say(f"{system}: skipped: {exc}")
            runs.append({"system": system, "variant": "-", "workload": "install",
                         "repetition": 0, "error": str(exc)})
            continue
        servers[system] = server
        variants[system] = [v for v in server.variants() if not chosen or v.name in chosen]
    command = "python benchmarks/peers/run.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="moldau-peers-"))
    order = [s for s in systems if s in servers]
    try:
        for rep in range(1, settings.repetitions + 1):
            shift = (rep - 1) % max(1, len(order))
            for system in order[shift:] + order[:shift]:
                rep_dir = workdir / f"{system}-{rep}"
                rep_dir.mkdir()
                runs.extend(run_system(servers[system], variants[system], rep, settings,
                                       rep_dir))
                if not args.keep_data:
                    shutil.rmtree(rep_dir, ignore_errors=True)
    except KeyboardInterrupt:
        _say("interrupted: servers stopped, writing what was measured")
    finally:
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = report.medians(runs)
    print(report.table(rows, settings.workloads))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command.strip(), "started": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1), "machine": _machine(),
        "versions": _versions(systems),
        "settings": {"records": settings.records, "kib_records": settings.kib_records,
                     "rate": settings.rate, "e2e_seconds": settings.e2e_seconds,
                     "warmup_seconds": settings.warmup_seconds,
                     "workloads": sorted(settings.only) or "all",
                     "max_seconds": settings.max_seconds,
                     "repetitions": settings.repetitions},
        "medians": rows, "runs": runs,
    }
    report.write_json(args.output_dir / "peers.json", document)
    drawn = report.chart(args.output_dir / "peers.png", rows, settings.workloads)
    _say(f"wrote {args.output_dir / 'peers.json'}"
         + (f" and {args.output_dir / 'peers.png'}" if drawn else " (no chart: no matplotlib)"))
    failed = [r for r in runs if r.get("error")]
    return 1 if failed and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
