"""Do the autoscaling signals rise before latency does? A real `metis serve` under a stepped,
open-loop load, with /metrics scraped throughout.

    .venv/bin/python benchmarks/bench_autoscale_signals.py [--runs 3] [--step-s 8]

The load offers full answers (`"cache": false`: embed, hybrid retrieval, extractive answer)
at a fixed rate per step, rising step by step past what the server can serve (open loop:
requests leave on schedule whether or not earlier ones returned, as real users do). Per step:
the client's p50/p95, and the requests in flight, event loop lag and loop busy share that
/metrics reported. Each signal "fires" at the first step where it passes its autoscaling
threshold (README "Autoscaling": 20 in flight, 50 ms of loop lag, the loop's thread on the CPU
40 % of the time); latency "degrades" at the first step whose p95 is over twice the first
step's (and over 500 ms, the policy's guard). The figure: how many steps (and what share of
the saturating rate) earlier each signal fired. Median of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from corpus import write_corpus
from harness import machine, metis_server, new_data_dir, percentile, upload_corpus

THRESHOLDS = {"in_flight": 20.0, "loop_lag_ms": 50.0, "loop_busy": 0.4}
P95_GUARD_MS = 500.0
QUESTIONS = ["What does the parser do?", "How are errors reported?", "What is a context?",
             "Explain how the cache works.", "What does this module return?"]


def _gauges(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("metis_http_requests_in_flight", "metis_event_loop_lag_seconds",
                           "metis_event_loop_busy_ratio"):
            out[family.name] = family.samples[0].value
    return out


async def _scraper(client: httpx.AsyncClient, seen: list[dict[str, float]],
                   stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            seen.append(_gauges((await client.get("/metrics", timeout=10)).text))
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.25)


async def _step(url: str, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    seen: list[dict[str, float]] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                r = await client.post("/api/chat/query", json={
                    "message": QUESTIONS[i % len(QUESTIONS)], "collection": "bench",
                    "cache": False})
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append((time.perf_counter() - t) * 1000)

        scraper = asyncio.create_task(_scraper(client, seen, stop))
        started = time.perf_counter()
        n = int(rate * seconds)
        tasks = []
        for i in range(n):  # open loop: on schedule, whatever the answers do
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        stop.set()
        await scraper
    in_flight = [s.get("metis_http_requests_in_flight", 0.0) for s in seen]
    lag = [s.get("metis_event_loop_lag_seconds", 0.0) * 1000 for s in seen]
    return {"rate": rate, "served_per_s": round(len(latencies) / elapsed, 1), "errors": errors,
            "p50_ms": round(percentile(latencies, 0.5), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            # the scraper's own request is always in flight: leave it out
            "in_flight": round(max(0.0, statistics.median(in_flight) - 1) if in_flight else 0, 1),
            "loop_lag_ms": round(max(lag) if lag else 0.0, 1),
            # the last scrape's: its 15 s window covers the step (--step-s 15)
            "loop_busy": round(seen[-1].get("metis_event_loop_busy_ratio", 0.0), 2) if seen
            else 0.0}


def _first(steps: list[dict[str, Any]], fired: Any) -> int | None:
    return next((i for i, s in enumerate(steps) if fired(s)), None)


async def one_run(url: str, rates: list[float], step_s: float) -> dict[str, Any]:
    steps = [await _step(url, rate, step_s) for rate in rates]
    base_p95 = steps[0]["p95_ms"]
    degraded = _first(steps, lambda s: s["p95_ms"] > max(2 * base_p95, P95_GUARD_MS))
    fired = {name: _first(steps, lambda s, n=name, t=limit: s[n] > t)
             for name, limit in THRESHOLDS.items()}
    return {"steps": steps, "degraded": degraded, "fired": fired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step-s", type=float, default=8.0)
    parser.add_argument("--rates", default="5,10,20,30,40,55,70,90",
                        help="offered requests/s, one step each")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        write_corpus(docs, 40)
        data_dir = new_data_dir(Path(tmp), "data")
        with metis_server(data_dir, env={"METIS_OBSERVABILITY__SAMPLE_INTERVAL_S": "0.5",
                                         "METIS_OBSERVABILITY__ACCESS_LOG": "false"}) as url:
            upload_corpus(url, docs)
            asyncio.run(_step(url, 5, 2))  # warm-up
            runs = [asyncio.run(one_run(url, rates, args.step_s)) for _ in range(args.runs)]
    for i, run in enumerate(runs):
        print(f"\nrun {i + 1}: rate/s served/s errors p50_ms p95_ms in_flight loop_lag_ms "
              "loop_busy")
        for s in run["steps"]:
            print(f"  {s['rate']:6.0f} {s['served_per_s']:8.1f} {s['errors']:6d} "
                  f"{s['p50_ms']:7.1f} {s['p95_ms']:7.1f} {s['in_flight']:9.1f} "
                  f"{s['loop_lag_ms']:11.1f} {s['loop_busy']:9.2f}")
        print(f"  latency degraded at step {run['degraded']}; signals fired at {run['fired']}")
    print("\nsteps of warning before latency degraded (median of runs; None = never fired):")
    for name in THRESHOLDS:
        leads = [r["degraded"] - r["fired"][name] for r in runs
                 if r["degraded"] is not None and r["fired"][name] is not None]
        lead = statistics.median(leads) if leads else None
        print(f"  {name:<12} {lead} (runs: {leads})")
    degraded = [r["degraded"] for r in runs]
    at = [rates[d] if d is not None else None for d in degraded]
    print(f"  latency degraded at steps {degraded} (offered rates {at})")


if __name__ == "__main__":
    main()
