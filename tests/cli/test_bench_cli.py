"""``moldau bench`` against a real broker: small runs, JSON output, the chart, bad options."""

from __future__ import annotations

import json
from pathlib import Path

from moldau.testing import broker
from tests.cli.conftest import Run

KEYS = {"records_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "max_ms"}


def _json(result_out: str) -> dict[str, object]:
    (line,) = result_out.strip().splitlines()
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


def test_produce_then_consume_counts_every_record(moldau: Run) -> None:
    produced = moldau("bench", "produce", "--topic", "bench-a", "--records", "20000",
                      "--record-size", "64", "--output", "json", "--durability", "async")
    assert produced.code == 0, produced.err
    summary = _json(produced.out)
    assert summary.keys() >= KEYS
    assert summary["records"] == 20000
    assert summary["bytes"] == 20000 * 64
    assert summary["errors"] == 0
    assert summary["durability"] == "async"
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]  # type: ignore[operator]

    consumed = moldau("bench", "consume", "--topic", "bench-a", "--records", "20000",
                      "--output", "json")
    assert consumed.code == 0, consumed.err
    summary = _json(consumed.out)
    assert summary["records"] == 20000
    assert summary["bytes"] == 20000 * 64
    assert summary["records_per_sec"] > 0  # type: ignore[operator]


def test_several_processes_and_partitions(moldau: Run) -> None:
    produced = moldau("bench", "produce", "--topic", "bench-b", "--records", "9000",
                      "--partitions", "3", "--producers", "2", "--keys", "random",
                      "--output", "json")
    assert produced.code == 0, produced.err
    assert _json(produced.out)["records"] == 9000
    described = moldau("topics", "describe", "bench-b", "--output", "json")
    assert '"partition_count": 3' in described.out or "3" in described.out
    consumed = moldau("bench", "consume", "--topic", "bench-b", "--consumers", "2",
                      "--records", "0", "--output", "json")
    assert consumed.code == 0, consumed.err
    assert _json(consumed.out)["records"] == 9000


def test_e2e_at_a_fixed_rate_with_a_chart(moldau: Run, tmp_path: Path) -> None:
    chart = tmp_path / "e2e.png"
    result = moldau("bench", "e2e", "--topic", "bench-e2e", "--rate", "2000", "--duration",
                    "1.5", "--output", "json", "--plot", str(chart))
    assert result.code == 0, result.err
    summary = _json(result.out)
    assert summary["records"] == 3000
    assert summary["errors"] == 0
    # a consistent histogram; how fast is for benchmarks, not for tests on a shared machine
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]  # type: ignore[operator]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output_and_usage_errors(moldau: Run) -> None:
    table = moldau("bench", "produce", "--topic", "bench-c", "--records", "1000")
    assert table.code == 0, table.err
    assert "records/s" in table.out
    assert "latency p99.9" in table.out

    assert moldau("bench", "produce").code == 1  # --topic is required
    negative = moldau("bench", "produce", "--topic", "x", "--records", "-5")
    assert negative.code == 1
    assert "negative" in negative.err
    small = moldau("bench", "e2e", "--topic", "bench-d", "--record-size", "4", "--duration", "1")
    assert small.code == 1
    assert "record-size" in small.err
    missing = moldau("bench", "consume", "--topic", "no-such-bench-topic", "--records", "1")
    assert missing.code == 2


def test_bench_over_the_tcp_port(moldau: Run) -> None:
    """``--tcp`` sends the records over the broker's TCP port; the JSON says so."""
    with broker(tcp=True) as running:
        assert running.tcp_address.startswith("127.0.0.1:")
        produced = moldau("bench", "produce", "--server", running.address, "--tcp",
                          running.tcp_address, "--topic", "bench-tcp", "--records", "5000",
                          "--output", "json", "--durability", "async")
        assert produced.code == 0, produced.err
        summary = _json(produced.out)
        assert summary["records"] == 5000
        assert summary["settings"]["transport"] == "tcp"  # type: ignore[index]
        e2e = moldau("bench", "e2e", "--server", running.address, "--tcp", running.tcp_address,
                     "--topic", "bench-tcp-e2e", "--rate", "2000", "--duration", "1",
                     "--output", "json", "--no-progress")
        assert e2e.code == 0, e2e.err
        summary = _json(e2e.out)
        assert summary["records"] >= 1500
        assert summary["errors"] == 0
        plain = moldau("bench", "consume", "--server", running.address, "--topic", "bench-tcp",
                       "--records", "5000", "--output", "json")
        assert _json(plain.out)["settings"]["transport"] == "grpc"  # type: ignore[index]
