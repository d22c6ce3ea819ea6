"""A mixed workload with a 1 s LLM, driven by Locust (targets: p95 <= 2 s, zero errors).

    .venv/bin/python benchmarks/bench_mixed.py [--users 50] [--seconds 60] [--runs 3] [--quick]

Per run: the fake LLM (its own process, 1 s before it answers), a fresh `metis serve` that
uses it, a corpus uploaded over HTTP, then Locust (`locustfile.py`, headless, FastHttpUser)
with `--users` users for `--seconds`: questions with repeats and paraphrases, follow-ups,
uploads with polling, listings. Every request is logged (start, name, ms, ok, cache level);
the figures come from that log: requests/s, p50/p95/p99, error rate, cache hits over time.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import harness  # noqa: E402


def read_samples(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [{"start": float(r["start"]), "name": r["name"], "ms": float(r["ms"]),
                 "ok": r["ok"] == "1", "cache": r["cache"], "error": r.get("error", "")}
                for r in csv.DictReader(f)]


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        return {"requests": 0}
    t0 = min(s["start"] for s in samples)
    seconds = max(s["start"] + s["ms"] / 1000 for s in samples) - t0
    ms = [s["ms"] for s in samples]
    per_second: Counter[int] = Counter(int(s["start"] - t0) for s in samples)
    queries = [s for s in samples if s["cache"]]
    hits: Counter[int] = Counter(int(s["start"] - t0) for s in queries if s["cache"] != "miss")
    asked: Counter[int] = Counter(int(s["start"] - t0) for s in queries)
    last = int(seconds)
    return {
        "requests": len(samples), "rps": len(samples) / seconds if seconds else 0.0,
        "errors": sum(not s["ok"] for s in samples),
        "error_rate": sum(not s["ok"] for s in samples) / len(samples),
        "p50_ms": harness.percentile(ms, 0.5), "p95_ms": harness.percentile(ms, 0.95),
        "p99_ms": harness.percentile(ms, 0.99),
        "by_name": {name: {"n": len(v), "p95_ms": harness.percentile(v, 0.95)}
                    for name in sorted({s["name"] for s in samples})
                    for v in [[s["ms"] for s in samples if s["name"] == name]]},
        "cache_levels": dict(Counter(s["cache"] for s in queries)),
        "error_kinds": dict(Counter(f"{s['name']}: {s['error'][:160]}" for s in samples
                                    if not s["ok"]).most_common(5)),
        "throughput_per_s": [per_second[i] for i in range(last + 1)],
        # Over the last 10 s at each second: one second holds too few questions to read.
        "hit_ratio_per_s": [_ratio(hits, asked, i - 9, i) for i in range(last + 1)],
    }


def _ratio(hits: Counter[int], asked: Counter[int], first: int, last: int) -> float | None:
    n = sum(asked[i] for i in range(first, last + 1))
    return sum(hits[i] for i in range(first, last + 1)) / n if n else None


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="metis-mixed-") as tmp, \
            harness.fake_llm(latency_ms=args.llm_latency_ms) as llm_url:
        root = Path(tmp)
        data = root / "data"
        harness.link_models(data)
        corpus.write_corpus(root / "docs", args.docs)
        env = {"METIS_LLM__PROVIDER": "ollama", "METIS_LLM__URL": llm_url,
               "METIS_LLM__MODEL": "fake", "METIS_LLM__TIMEOUT_S": "30"}
        with harness.metis_server(data, env, log=root / "metis.log") as url:
            harness.upload_corpus(url, root / "docs")
            samples_path = root / "samples.csv"
            cmd = [str(Path(harness.PY).parent / "locust"), "-f", str(HERE / "locustfile.py"),
                   "--headless", "-u", str(args.users), "-r", str(max(1, args.users // 5)),
                   "-t", f"{args.seconds:g}s", "-H", url, "--only-summary",
                   "--stop-timeout", "30", "--loglevel", "WARNING"]
            env_run = {**os.environ, "METIS_BENCH_SAMPLES": str(samples_path),
                       "METIS_BENCH_TOPICS": str(args.topics)}
            done = subprocess.run(cmd, env=env_run, capture_output=True, text=True,
                                  timeout=args.seconds + 180)
            if not samples_path.exists():
                raise RuntimeError(f"locust wrote no samples: {done.stderr[-2000:]}")
            samples = read_samples(samples_path)
    summary = summarize(samples)
    print(f"  run {run + 1}: {summary['requests']} requests, {summary['rps']:.1f} req/s, p50 "
          f"{summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, p99 "
          f"{summary['p99_ms']:.0f} ms, errors {summary['errors']}; cache "
          f"{summary['cache_levels']}")
    for kind, n in summary["error_kinds"].items():
        print(f"    {n} x {kind}")
    return {"summary": summary, "latencies_ms": [s["ms"] for s in samples]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.seconds = min(args.seconds, 20)
    runs = [one_run(args, i) for i in range(args.runs)]
    summaries = [r["summary"] for r in runs]
    med = harness.median
    middle = sorted(runs, key=lambda r: r["summary"]["p95_ms"])[len(runs) // 2]
    return {
        "name": "mixed", "title": f"Mixed workload, {args.users} users, LLM answering in "
                                  f"{args.llm_latency_ms / 1000:g} s",
        "figures": {
            "load generator": "Locust (FastHttpUser), its own process",
            "seconds per run": args.seconds,
            "requests/s": round(med([s["rps"] for s in summaries]), 1),
            "p50/p95/p99 ms": [round(med([s[k] for s in summaries]), 1)
                               for k in ("p50_ms", "p95_ms", "p99_ms")],
            "error rate": round(med([s["error_rate"] for s in summaries]), 4),
            "requests per kind (median run)": {k: v["n"] for k, v in
                                               middle["summary"]["by_name"].items()},
            "p95 ms per kind (median run)": {k: round(v["p95_ms"]) for k, v in
                                             middle["summary"]["by_name"].items()},
            "cache levels (median run)": middle["summary"]["cache_levels"],
            "errors (all runs)": [s["error_kinds"] for s in summaries if s["errors"]],
        },
        "runs": summaries,
        # The run with the median p95, for the plots of `metis bench`.
        "series": {"latencies_ms": middle["latencies_ms"],
                   "throughput_per_s": middle["summary"]["throughput_per_s"],
                   "hit_ratio_per_s": middle["summary"]["hit_ratio_per_s"]},
        "targets": [
            harness.target("p95 latency (median of runs)", med([s["p95_ms"] for s in summaries]),
                           2000, at_most=True, unit=" ms"),
            harness.target("errors (all runs)", sum(s["errors"] for s in summaries), 0,
                           at_most=True),
        ],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--topics", type=int, default=60)
    p.add_argument("--llm-latency-ms", type=float, default=1000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    harness.write_result(a.json, main(a))
