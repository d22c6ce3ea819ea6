"""An LLM provider refusing half the requests with 429 (targets: zero failed user requests, and
the provider never gets more than its configured rate).

    .venv/bin/python benchmarks/bench_ratelimit.py [--requests 32] [--runs 3] [--quick]

A real `metis serve` uses the fake LLM (its own process), which answers 429 with Retry-After
to every other request and has its own cap (`--cap` requests in any second, 429 beyond).
Metis is configured for `--rate` requests a second (a little under the cap, as one would).
`--users` clients ask uncached questions over HTTP at once. A user request fails if it is not
a 200 LLM answer without warnings. The provider's side is read from the fake's own counters.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402


async def users(url: str, n_requests: int, n_users: int) -> dict[str, Any]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(i)
    failed: list[str] = []
    latencies: list[float] = []

    async def user(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            r = await client.post("/api/chat/query", json={
                "message": f"What is the refund window for order {i}?", "cache": False,
                "use_rag": False})
            latencies.append(time.perf_counter() - started)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200 or body.get("mode") != "llm" or body.get("warnings"):
                failed.append(f"{r.status_code}: {str(body)[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(n_users)))
        elapsed = time.perf_counter() - started
    return {"failed": failed, "seconds": elapsed, "latencies": latencies}


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    fake_config = {"fail_rate": 0.5, "fail_status": 429, "retry_after_s": args.retry_after,
                   "max_rps": args.cap}
    with tempfile.TemporaryDirectory(prefix="metis-429-") as tmp, \
            harness.fake_llm(**fake_config) as llm_url:
        data = Path(tmp) / "data"
        harness.link_models(data)
        env = {"METIS_LLM__PROVIDER": "ollama", "METIS_LLM__URL": llm_url,
               "METIS_LLM__MODEL": "fake", "METIS_LLM__TIMEOUT_S": "30",
               "METIS_LLM__REQUESTS_PER_MINUTE": str(args.rate * 60),
               "METIS_RATELIMIT__MAX_RETRIES": str(args.retries),
               "METIS_RATELIMIT__RETRY_BUDGET_S": "120"}
        with harness.metis_server(data, env, log=Path(tmp) / "metis.log") as url:
            httpx.post(llm_url + "/_reset")
            result = asyncio.run(users(url, args.requests, args.users))
            stats = httpx.get(llm_url + "/_stats").json()
    per_second = stats["requests_per_second"]
    print(f"  run {run + 1}: {len(result['failed'])} failed of {args.requests} in "
          f"{result['seconds']:.1f} s; provider got {stats['requests_total']} requests, "
          f"{stats['failures']} refused with 429 on purpose, {stats['rate_limited']} over its "
          f"cap, busiest second {max(per_second, default=0)}")
    for failure in result["failed"][:3]:
        print("    failed:", failure)
    return {"failed": len(result["failed"]), "seconds": result["seconds"],
            "provider_requests": stats["requests_total"], "injected_429": stats["failures"],
            "over_cap": stats["rate_limited"], "busiest_second": max(per_second, default=0),
            "per_second": per_second,
            "p95_s": harness.percentile(result["latencies"], 0.95)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.requests = min(args.requests, 12)
    runs = [one_run(args, i) for i in range(args.runs)]
    busiest = max(r["busiest_second"] for r in runs)
    return {
        "name": "ratelimit", "title": "LLM provider answering 429 to half the requests",
        "figures": {
            "user requests per run": args.requests, "concurrent users": args.users,
            "configured rate (requests/s)": args.rate, "provider cap (requests/s)": args.cap,
            "median run time (s)": round(harness.median([r["seconds"] for r in runs]), 1),
            "median p95 latency (s)": round(harness.median([r["p95_s"] for r in runs]), 2),
            "provider requests per run": [r["provider_requests"] for r in runs],
            "injected 429s per run": [r["injected_429"] for r in runs],
        },
        "runs": runs,
        "targets": [
            harness.target("failed user requests (worst run)", max(r["failed"] for r in runs),
                           0, at_most=True),
            harness.target("busiest second at the provider (requests)", busiest,
                           math.ceil(args.rate), at_most=True),
            harness.target("requests over the provider's own cap", sum(r["over_cap"] for r in runs),
                           0, at_most=True),
        ],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--rate", type=float, default=8, help="configured requests/s")
    p.add_argument("--cap", type=int, default=10, help="the provider's own requests/s cap")
    p.add_argument("--retry-after", type=float, default=0.25)
    p.add_argument("--retries", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    harness.write_result(p.parse_known_args()[0].json, main(p.parse_args()))
