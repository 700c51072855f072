"""The benchmark's figures as PNGs (matplotlib, Agg backend): `plot(report, out_dir)`, from bench.py's report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["FIGURES", "plot"]

SIDES = {"direct": "upstream called directly", "floor": "stack floor (bench_floor.py)", "server": "this server"}
COLORS = {"direct": "#7f7f7f", "floor": "#1f77b4", "server": "#d62728"}
TARGET_KIB = 64.0  # the memory target per open stream


def plot(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write every figure the report has data for into `out_dir` (created); the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(report)
        if fig is None:
            continue
        fig.text(0.01, 0.005, _footer(report), fontsize=7, color="#555555", va="bottom")
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: reruns diff only on data
        plt.close(fig)
        written.append(path)
    return written


def _footer(report: dict[str, Any]) -> str:
    machine = report.get("machine") or {}
    start, end = machine.get("loadavg_start") or ["?"], machine.get("loadavg_end") or ["?"]
    return (
        f"{machine.get('cpus', '?')} CPUs, load average {start[0]} at the start, {end[0]} at the end; server engine "
        f"{report.get('engine', '?')}. A noisy shared machine: read the ratios of sides measured together."
    )


def _results(report: dict[str, Any], phase: str) -> dict[str, Any] | None:
    result = (report.get("results") or {}).get(phase)
    return result if isinstance(result, dict) and "error" not in result and "skipped" not in result else None


def latency_vs_concurrency(report: dict[str, Any]) -> Figure | None:
    """p50 and p99 latency and throughput of non-streamed completions against concurrent clients, per side."""
    result = _results(report, "concurrency")
    rows = (result or {}).get("by_level") or []
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    panels = (("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"), ("rps", "throughput (requests/s)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for side in SIDES:
            points = [(row["clients"], row[side][key]) for row in rows if side in row]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=COLORS[side], label=SIDES[side])
        ax.set_xscale("log", base=2)
        ax.set_xticks([row["clients"] for row in rows], [str(row["clients"]) for row in rows])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Non-streamed chat completion against concurrent clients (one gevent worker each)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def memory_vs_streams(report: dict[str, Any]) -> Figure | None:
    """The worker's RSS, and RSS growth per open stream, against the open streams (as they were opened)."""
    result = _results(report, "streams")
    points = [(n, mib) for n, mib in (result or {}).get("rss_checkpoints") or []]
    if len(points) < 2:
        return None
    base = points[0][1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    left.plot([n for n, _ in points], [mib for _, mib in points], marker="o", color=COLORS["server"])
    left.set_xlabel("open streams")
    left.set_ylabel("worker RSS (MiB)")
    left.set_ylim(bottom=0)
    per = [(n, (mib - base) * 1024 / n) for n, mib in points if n > 0]
    right.plot([n for n, _ in per], [k for _, k in per], marker="o", color=COLORS["server"], label="this server")
    right.axhline(TARGET_KIB, color="#2ca02c", linestyle="--", label=f"target {TARGET_KIB:g} KiB")
    right.set_xlabel("open streams")
    right.set_ylabel("KiB per open stream (RSS growth / streams)")
    right.set_ylim(bottom=0, top=max(TARGET_KIB * 1.3, *(k * 1.15 for _, k in per)))
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    wire = (result or {}).get("upstream", "")
    fig.suptitle(f"Memory of one gevent worker holding open streams ({wire})")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if isinstance(numerator, int | float) and isinstance(denominator, int | float) and denominator > 0:
        return numerator / denominator
    return None


def floor_ratios(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(scenario, this server's cost over the stack floor's) for every scenario the report measured both in."""
    rows: list[tuple[str, float | None]] = []
    latency, ttft, cpu = (_results(report, p) or {} for p in ("latency", "ttft", "cpu"))
    for name, result in (("non-streamed latency", latency), ("time to first token", ttft)):
        server, floor = result.get("server") or {}, result.get("floor") or {}
        for q in ("p50", "p99"):
            rows.append((f"{name} {q}", _ratio(server.get(f"{q}_ms"), floor.get(f"{q}_ms"))))
    cpu_request = _ratio(latency.get("worker_cpu_ms_per_request"), latency.get("floor_worker_cpu_ms_per_request"))
    rows.append(("worker CPU per non-streamed request", cpu_request))
    chunk = _ratio(cpu.get("worker_cpu_us_per_chunk"), cpu.get("floor_worker_cpu_us_per_chunk"))
    rows.append(("worker CPU per chunk, 4 KB text frames", chunk))
    real = cpu.get("realistic") or {}
    real_chunk = _ratio(real.get("worker_cpu_us_per_chunk"), real.get("floor_worker_cpu_us_per_chunk"))
    rows.append(("worker CPU per chunk, real-shaped frames", real_chunk))
    for row in (_results(report, "concurrency") or {}).get("by_level") or []:
        server, floor = row.get("server") or {}, row.get("floor") or {}
        # A cost, like the rows above: the floor's throughput over the server's is the server's time per request
        # over the floor's.
        clients = f"{row['clients']} client" + ("s" if row["clients"] != 1 else "")
        rows.append((f"time per request at {clients} (1/throughput)", _ratio(floor.get("rps"), server.get("rps"))))
        rows.append((f"p50 latency at {clients}", _ratio(server.get("p50_ms"), floor.get("p50_ms"))))
    return [(name, value) for name, value in rows if value is not None]


def product_vs_floor(report: dict[str, Any]) -> Figure | None:
    """This server's cost over the stack floor's, per scenario: 1 is the bare stack's cost."""
    rows = floor_ratios(report)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    names, values = [name for name, _ in rows][::-1], [value for _, value in rows][::-1]
    bars = ax.barh(names, values, color=[COLORS["server"] if v > 1 else COLORS["floor"] for v in values])
    ax.axvline(1.0, color="black", linewidth=1)
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}×", va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("this server ÷ stack floor (same run, interleaved; 1 = the bare stack's cost, lower is better)")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle("What this server costs over the stack floor (gunicorn + gevent + Flask + requests)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


FIGURES: dict[str, Callable[[dict[str, Any]], Figure | None]] = {
    "latency_vs_concurrency": latency_vs_concurrency,
    "memory_per_stream": memory_vs_streams,
    "server_vs_floor": product_vs_floor,
}
