"""`scripts/bench.py --plot`: the figures drawn from a made-up report, without running the benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from PIL import Image

from .conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = {"latency_vs_concurrency.png", "memory_per_stream.png", "server_vs_floor.png"}


@pytest.fixture(scope="module")
def bench():
    """scripts/bench.py as a module (it puts the repository and scripts/ on sys.path, as when run)."""
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_under_test", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.path[:] = path


def side(p50: float, p99: float, rps: float | None = None) -> dict:
    cell = {"n": 40, "p50_ms": p50, "p99_ms": p99, "mean_ms": p50 * 1.1}
    return cell if rps is None else {**cell, "rps": rps}


def made_up_report() -> dict:
    levels = [1, 4, 16]
    return {
        "machine": {"cpus": 2, "loadavg_start": [1.5, 1.0, 0.5]},
        "engine": "curl",
        "results": {
            "latency": {
                "direct": side(4, 9),
                "server": side(12, 30),
                "floor": side(8, 20),
                "worker_cpu_ms_per_request": 5.0,
                "floor_worker_cpu_ms_per_request": 4.0,
            },
            "ttft": {"direct": side(3, 8), "server": side(9, 20), "floor": side(9, 25)},
            "cpu": {
                "worker_cpu_us_per_chunk": 30.0,
                "floor_worker_cpu_us_per_chunk": 20.0,
                "realistic": {"worker_cpu_us_per_chunk": 40.0, "floor_worker_cpu_us_per_chunk": 25.0},
            },
            "concurrency": {
                "levels": levels,
                "by_level": [
                    {
                        "clients": n,
                        "direct": side(3 * n, 7 * n, 300),
                        "server": side(9 * n, 20 * n, 100),
                        "floor": side(7 * n, 16 * n, 125),
                    }
                    for n in levels
                ],
            },
            "streams": {"upstream": "light", "rss_checkpoints": [[0, 60.0], [500, 90.0], [1000, 115.0]]},
        },
    }


def assert_valid_png(path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()  # decodes every chunk: a truncated or corrupt file raises
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_plot_writes_the_three_figures_as_valid_pngs(bench, tmp_path):
    written = bench.plot(made_up_report(), tmp_path / "figures")
    assert {path.name for path in written} == NAMES
    assert {path.name for path in (tmp_path / "figures").iterdir()} == NAMES
    for path in written:
        assert_valid_png(path)


def test_a_phase_not_run_draws_no_figure(bench, tmp_path):
    report = made_up_report()
    del report["results"]["concurrency"]
    report["results"]["streams"] = {"error": "setup failed: made up"}
    written = bench.plot(report, tmp_path)
    assert [path.name for path in written] == ["server_vs_floor.png"]
    assert_valid_png(written[0])


def test_floor_ratios_are_the_servers_cost_over_the_floors(bench):
    from bench_plot import floor_ratios  # on sys.path once bench is imported

    ratios = dict(floor_ratios(made_up_report()))
    assert ratios["non-streamed latency p50"] == pytest.approx(1.5)
    assert ratios["time to first token p99"] == pytest.approx(0.8)
    assert ratios["worker CPU per chunk, real-shaped frames"] == pytest.approx(1.6)
    # Throughput is a cost the other way round: the floor's requests/s over the server's.
    assert ratios["time per request at 1 client (1/throughput)"] == pytest.approx(1.25)
    assert ratios["p50 latency at 16 clients"] == pytest.approx(9 / 7)


def test_plot_from_a_saved_report_runs_no_benchmark(bench, tmp_path, capsys):
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(made_up_report()))
    assert bench.main(["--plot-from", str(saved), "--plot", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in printed} == NAMES
    for name in NAMES:
        assert_valid_png(tmp_path / "out" / name)
