"""`metis bench`: the report and its plots, from results shaped like the benchmarks' JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from metis_rag.benchsuite import SUITE, find_benchmarks, run_suite, write_report
from metis_rag.cli import app
from metis_rag.errors import InvalidInput

PNG = b"\x89PNG\r\n\x1a\n"


def results() -> list[dict[str, object]]:
    cdf = [float(i) for i in range(1, 101)]
    return [
        {"name": "mixed", "about": "mixed workload", "seconds": 61.0, "title": "Mixed",
         "figures": {"requests/s": 17.2},
         "targets": [{"name": "p95 latency", "value": 1460.0, "limit": 2000, "op": "<=",
                      "unit": " ms", "ok": True}],
         "series": {"latencies_ms": [12.0, 40.0, 1010.0, 1200.0, 1900.0] * 20,
                    "throughput_per_s": [5, 17, 18, 16],
                    "hit_ratio_per_s": [None, 0.1, 0.3, 0.45]}},
        {"name": "load", "about": "cached", "seconds": 400.0, "title": "Cached",
         "figures": {"saturated: metis requests/s": 900},
         "targets": [{"name": "requests/s vs bare", "value": 0.23, "limit": 0.5, "op": ">=",
                      "unit": "", "ok": False}],
         "runs": [{"metis": {"cdf_ms": cdf}, "metis_latency": {"cdf_ms": cdf}}]},
        {"name": "ingest", "about": "ingestion", "seconds": 3.0, "exit_code": 1,
         "error": "Traceback ...\nRuntimeError: no model"},
    ]


def test_the_report_has_every_verdict_figure_and_plot(tmp_path: Path) -> None:
    report = write_report(results(), tmp_path)  # type: ignore[arg-type]
    text = report.read_text()
    assert "| mixed | 1/1 targets met | 61 s |" in text
    assert "| load | 0/1 targets met | 400 s |" in text
    assert "| ingest | FAILED TO RUN (exit 1) | 3 s |" in text
    assert "| p95 latency | 1460.0 ms | <= 2000 ms | PASS |" in text
    assert "| requests/s vs bare | 0.23 | >= 0.5 | FAIL |" in text
    assert "RuntimeError: no model" in text and "- requests/s: 17.2" in text
    for name in ("latency.png", "throughput.png", "cache_hit_ratio.png"):
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert (tmp_path / name).stat().st_size > 5_000  # drawn, not an empty canvas


def test_a_report_without_series_has_no_plots(tmp_path: Path) -> None:
    report = write_report(results()[2:], tmp_path)  # type: ignore[arg-type]
    assert "## Plots" not in report.read_text()
    assert not list(tmp_path.glob("*.png"))


def test_unknown_benchmarks_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nope") as caught:
        run_suite(["batching", "nope"], out=tmp_path)
    assert caught.value.code == "unknown_benchmark"
    assert not list(tmp_path.iterdir())


def test_every_benchmark_of_the_suite_exists() -> None:
    folder = find_benchmarks()
    assert all((folder / b.script).exists() for b in SUITE.values())


def test_the_cli_lists_the_suite() -> None:
    out = CliRunner().invoke(app, ["bench", "--list"])
    assert out.exit_code == 0
    assert "ratelimit" in out.output and "(only when named)" in out.output
    out = CliRunner().invoke(app, ["bench", "nope"])
    assert out.exit_code == 2 and "unknown_benchmark" in out.output
