"""Results of the peer comparison: medians, the stdout table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["chart", "medians", "table", "write_json"]

_METRICS = ("records_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "max_ms")


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, variant, workload): the median of each metric over repetitions."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("error"):
            continue
        groups.setdefault((run["system"], run["variant"], run["workload"]), []).append(run)
    rows = []
    for (system, variant, workload), group in groups.items():
        row: dict[str, Any] = {
            "system": system, "variant": variant, "workload": workload,
            "durability": group[0]["durability"], "client": group[0]["client"],
            "repetitions": len(group),
            "records": int(statistics.median(r["records"] for r in group)),
        }
        for metric in _METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None]
            row[metric] = round(statistics.median(values), 3) if values else None
        rows.append(row)
    return rows


def _number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], workloads: list[str]) -> str:
    """A Markdown table, grouped by workload, fastest first."""
    header = ("| workload | system | durability | records/s | MB/s | p50 ms | p99 ms | p99.9 ms "
              "| max ms | n |")
    lines = [header, "|" + "---|" * 10]
    for workload in workloads:
        chosen = [r for r in rows if r["workload"] == workload]
        if workload.startswith("e2e"):
            chosen.sort(key=lambda r: r["p99_ms"] if r["p99_ms"] is not None else 1e9)
        else:
            chosen.sort(key=lambda r: -(r["records_per_sec"] or 0))
        for r in chosen:
            lines.append(
                f"| {workload} | {r['system']} {r['variant']} | {r['durability']} "
                f"| {_number(r['records_per_sec'])} | {_number(r['mb_per_sec'], 1)} "
                f"| {_number(r['p50_ms'])} | {_number(r['p99_ms'])} | {_number(r['p999_ms'])} "
                f"| {_number(r['max_ms'])} | {r['repetitions']} |")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def chart(path: Path, rows: list[dict[str, Any]], workloads: list[str]) -> bool:
    """Bar charts of records/s per throughput workload and e2e p50/p99; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = sorted({f"{r['system']} {r['variant']}" for r in rows})
    throughput = [w for w in workloads if not w.startswith("e2e")]
    latency = [w for w in workloads if w.startswith("e2e")]
    figure, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 1]})
    colors = plt.get_cmap("tab20")(range(len(labels)))
    width = 0.8 / max(1, len(labels))
    by_key = {(f"{r['system']} {r['variant']}", r["workload"]): r for r in rows}
    for i, label in enumerate(labels):
        heights = [(by_key.get((label, w)) or {}).get("records_per_sec") or 0 for w in throughput]
        axes[0].bar([x + i * width for x in range(len(throughput))], heights, width,
                    label=label, color=colors[i])
    axes[0].set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(throughput))],
                       throughput, rotation=15)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("records/s (log scale, median)")
    axes[0].set_title("Throughput, one Python client per process")
    axes[0].legend(fontsize=8, ncol=2)
    for workload in latency:
        p99 = [(by_key.get((label, workload)) or {}).get("p99_ms") or 0 for label in labels]
        p50 = [(by_key.get((label, workload)) or {}).get("p50_ms") or 0 for label in labels]
        positions = range(len(labels))
        axes[1].barh(positions, p99, color=colors, alpha=0.45, label="p99")
        axes[1].barh(positions, p50, color=colors, label="p50")
        axes[1].set_yticks(list(positions), labels, fontsize=8)
        axes[1].set_xscale("log")
        axes[1].set_xlabel("ms (log scale); dark p50, light p99")
        axes[1].set_title(f"End-to-end latency, {workload}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
