"""`metis bench`: runs the benchmarks of ``benchmarks/`` and writes a Markdown report with plots.

Each benchmark is a script run in its own process; the throughput ones write their figures
and targets as JSON (``--json``), older ones are reported by their printed output. The report
and its PNG plots (latency distribution, throughput over time, cache hit ratio) go to
``benchmarks/results/<timestamp>/``. Plotting needs the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput, MissingDependency


@dataclass(frozen=True, slots=True)
class Benchmark:
    script: str
    about: str
    writes_json: bool = True
    default: bool = True  # in the suite when no name is given


SUITE: dict[str, Benchmark] = {
    "batching": Benchmark("bench_batching.py", "query micro-batching vs one batch-32 call"),
    "ratelimit": Benchmark("bench_ratelimit.py", "an LLM answering 429 to half the requests"),
    "load": Benchmark("bench_load.py", "200 clients on cached queries vs bare FastAPI (wrk)"),
    "mixed": Benchmark("bench_mixed.py", "mixed workload with a 1 s LLM (Locust)"),
    "ingest": Benchmark("bench_ingest.py", "ingestion throughput", writes_json=False,
                        default=False),
    "cache-backends": Benchmark("bench_cache_backends.py", "cache backend latency",
                                writes_json=False, default=False),
    "query-100k": Benchmark("bench_query_100k.py", "query latency at 100k chunks (needs "
                            "build_100k.py once)", writes_json=False, default=False),
    "cache": Benchmark("bench_cache.py", "multi-level cache on a Zipf workload vs GPTCache "
                       "(needs the peers extra)", writes_json=False, default=False),
    "tasks": Benchmark("bench_tasks.py", "task engine overhead, embedded and on Celery vs "
                       "bare Celery", writes_json=False, default=False),
    "ingest-tasks": Benchmark("bench_ingest_tasks.py", "1,000 documents as tasks vs the "
                              "synchronous pipeline", writes_json=False, default=False),
    "vector-libs": Benchmark("bench_vector_libs.py", "hnswlib vs usearch vs faiss at 100k "
                             "vectors (needs the peers extra)", writes_json=False, default=False),
    "pgvector": Benchmark("bench_pgvector.py", "pgvector vs the embedded index at 100k "
                          "vectors", writes_json=False, default=False),
    "metrics-overhead": Benchmark("bench_metrics_overhead.py", "what the metrics middleware "
                                  "adds per request", writes_json=False, default=False),
    "tracing": Benchmark("bench_tracing.py", "what tracing costs, off and on (OTLP export)",
                         writes_json=False, default=False),
    "autoscale-signals": Benchmark("bench_autoscale_signals.py", "do the autoscaling signals "
                                   "rise before latency (stepped open-loop load)",
                                   writes_json=False, default=False),
}


def find_benchmarks(start: Path | None = None) -> Path:
    """The ``benchmarks/`` folder of the checkout we run from (the working directory or ours)."""
    for root in (start or Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "benchmarks" / "harness.py").exists():
            return root / "benchmarks"
    raise InvalidInput("No benchmarks/ folder here: run `metis bench` from a Metis checkout.",
                       code="benchmarks_not_found")


def run_suite(
    names: Sequence[str], *, quick: bool = False, runs: int | None = None,
    out: Path | None = None, echo: Callable[[str], None] = print,
) -> Path:
    """Runs the named benchmarks (the default suite if none) and returns the report's path."""
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise InvalidInput(f"Unknown benchmark(s) {', '.join(unknown)}; known: "
                           f"{', '.join(SUITE)}.", code="unknown_benchmark")
    bench_dir = find_benchmarks()
    chosen = list(names) or [n for n, b in SUITE.items() if b.default]
    out = out or bench_dir / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name in chosen:
        echo(f"running {name}: {SUITE[name].about}")
        results.append(_run_one(name, SUITE[name], bench_dir, out, quick, runs))
        echo(f"  {name}: {_verdict(results[-1])} ({results[-1]['seconds']:.0f} s)")
    return write_report(results, out, quick=quick)


def _run_one(name: str, bench: Benchmark, bench_dir: Path, out: Path, quick: bool,
             runs: int | None) -> dict[str, Any]:
    args = [sys.executable, str(bench_dir / bench.script)]
    if bench.writes_json:
        args += ["--json", str(out / f"{name}.json")] + (["--quick"] if quick else [])
    if runs is not None or (quick and not bench.writes_json):
        args += ["--runs", str(runs or 1)]
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, cwd=bench_dir.parent)
    seconds = time.monotonic() - started
    (out / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    result: dict[str, Any] = {"name": name, "about": bench.about, "seconds": seconds,
                              "exit_code": done.returncode, "output": done.stdout[-6000:]}
    json_path = out / f"{name}.json"
    if done.returncode == 0 and json_path.exists():
        result.update(json.loads(json_path.read_text()))
    elif done.returncode != 0:
        result["error"] = done.stderr[-3000:]
    return result


def _verdict(result: dict[str, Any]) -> str:
    if result.get("error") is not None:
        return f"FAILED TO RUN (exit {result['exit_code']})"
    targets = result.get("targets") or []
    if not targets:
        return "ran"
    passed = sum(t["ok"] for t in targets)
    return f"{passed}/{len(targets)} targets met"


def write_report(results: list[dict[str, Any]], out: Path, *, quick: bool = False) -> Path:
    """report.md, with plots next to it, from the benchmarks' results."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, out)
    lines = [f"# Metis benchmarks, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    if quick:
        lines += ["Quick mode: shorter runs, a smoke test rather than figures to quote.", ""]
    lines += ["| benchmark | result | time |", "|---|---|---|"]
    lines += [f"| {r['name']} | {_verdict(r)} | {r['seconds']:.0f} s |" for r in results]
    for r in results:
        lines += ["", f"## {r.get('title') or r['name']}", "", r["about"], ""]
        if r.get("error") is not None:
            lines += ["It did not run:", "", "```", r["error"].strip()[-2000:], "```"]
            continue
        if r.get("targets"):
            lines += ["| target | measured | limit | |", "|---|---|---|---|"]
            lines += [f"| {t['name']} | {t['value']}{t['unit']} | {t['op']} {t['limit']}"
                      f"{t['unit']} | {'PASS' if t['ok'] else 'FAIL'} |" for t in r["targets"]]
            lines.append("")
        if r.get("figures"):
            lines += [f"- {k}: {v}" for k, v in r["figures"].items()]
        elif r.get("output"):
            lines += ["```", r["output"].strip(), "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{title}]({path.name})" for title, path in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plots(results: list[dict[str, Any]], out: Path) -> list[tuple[str, Path]]:
    by_name = {r["name"]: r for r in results if r.get("error") is None}
    mixed = by_name.get("mixed", {}).get("series")
    load_runs = by_name.get("load", {}).get("runs")
    if not mixed and not load_runs:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency("matplotlib", "bench") from exc
    made: list[tuple[str, Path]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        made.append((title, out / name))

    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    if mixed and mixed.get("latencies_ms"):
        latencies = sorted(mixed["latencies_ms"])
        hist.hist(latencies, bins=60)
        cdf.plot(latencies, [100 * (i + 1) / len(latencies) for i in range(len(latencies))],
                 label="mixed workload (Locust)")
    if load_runs:
        for phase, label in (("metis_latency", "cached, clients thinking (wrk)"),
                             ("metis", "cached, saturated (wrk)")):
            points = load_runs[len(load_runs) // 2][phase]["cdf_ms"]
            pairs = [(x, p) for p, x in enumerate(points, start=1) if x > 0]
            cdf.plot([x for x, _ in pairs], [p for _, p in pairs], label=label)
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("requests")
    hist.set_title("Mixed workload: latency histogram")
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms, log)")
    cdf.set_ylabel("percentile")
    cdf.set_title("Latency percentiles")
    cdf.legend(fontsize="small")
    save(fig, "latency.png", "Latency distribution")
    if mixed and mixed.get("throughput_per_s"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(mixed["throughput_per_s"], drawstyle="steps-post")
        ax.set_xlabel("second of the run")
        ax.set_ylabel("requests/s")
        ax.set_title("Throughput over time (mixed workload)")
        save(fig, "throughput.png", "Throughput over time")
        ratios = mixed.get("hit_ratio_per_s") or []
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([i for i, v in enumerate(ratios) if v is not None],
                [v for v in ratios if v is not None], marker=".", linestyle="-")
        ax.set_ylim(0, 1)
        ax.set_xlabel("second of the run")
        ax.set_ylabel("share of questions")
        ax.set_title("Cache hit ratio over time (any level, last 10 s, mixed workload)")
        save(fig, "cache_hit_ratio.png", "Cache hit ratio over time")
    return made
