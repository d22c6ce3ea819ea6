"""What tracing costs: its hooks while off (target <= 1 % of throughput) and tracing on (reported).

    .venv/bin/python benchmarks/bench_tracing.py [--runs 3] [--requests 3000]

1. The hooks alone: a `traced` call and a `span()` block while tracing is off, against the
   plain call, in nanoseconds.
2. The real app in-process over ASGI (no sockets, so the differences are the tracing's), two
   workloads: a cached answer (an exact hit, ~0.5 ms: the worst case, where fixed costs weigh
   most) and a full answer (`"cache": false`: embed, retrieve, extractive answer). Three
   variants take turns in slices inside each run:
   - "no hooks": the traced methods swapped for their undecorated originals (what the
     middleware's one `is None` branch costs is not removable and stays in);
   - "off": as shipped, no endpoint configured;
   - "on": every span recorded (ratio 1.0) and exported over OTLP/HTTP with the batch
     processor to a receiver in its own process that decodes them.
Figures are medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager

from bench_metrics_overhead import DOC, QUESTION, _call, _scope  # sibling script
from harness import PY, free_port, link_models, machine, process
from metis_rag.app import create_app
from metis_rag.cache.levels import SemanticIndex
from metis_rag.cache.tiered import TieredCache
from metis_rag.config import ObservabilitySettings, Settings
from metis_rag.observability import tracing
from metis_rag.observability.logs import configure_logging
from metis_rag.rag.retriever import Retriever

TRACED = [(TieredCache, "get"), (TieredCache, "get_many"), (SemanticIndex, "lookup"),
          (Retriever, "retrieve")]
VARIANTS = ("no hooks", "off", "on")
UNCACHED = orjson.dumps({"message": "How long is the refund window?", "cache": False})


@contextmanager
def hooks_removed() -> Iterator[None]:
    saved = [(cls, name, getattr(cls, name)) for cls, name in TRACED]
    for cls, name, fn in saved:
        setattr(cls, name, fn.__wrapped__)
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def hook_ns(n: int) -> dict[str, float]:
    """ns per call of a plain function, the same `traced` while off, and an empty `span()`."""
    async def plain() -> int:
        return 1

    decorated = tracing.traced("x")(plain)

    async def loop(fn: Callable[[], Any]) -> float:
        t = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        return (time.perf_counter_ns() - t) / n

    def spans() -> float:
        t = time.perf_counter_ns()
        for _ in range(n):
            with tracing.span("x"):
                pass
        return (time.perf_counter_ns() - t) / n

    return {"plain async call": asyncio.run(loop(plain)),
            "traced async call (off)": asyncio.run(loop(decorated)),
            "empty span() block (off)": spans()}


async def _prepare(app: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bench") as c:
        r = await c.post("/api/documents", files={"files": ("policy.md", DOC.encode())})
        assert r.status_code == 202, r.text
        for task_id in r.json()["task_ids"]:
            while (await c.get(f"/api/tasks/{task_id}")).json()["status"] != "completed":
                await asyncio.sleep(0.05)


async def _slice(app: Any, scope: dict[str, Any], body: bytes, n: int) -> tuple[float, float]:
    """Wall and CPU seconds (the whole process: exporter threads included) for `n` requests."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        assert await _call(app, scope, body) == 200
    return time.perf_counter() - wall, time.process_time() - cpu


async def _timed(variant: str, on: tracing.Tracing, app: Any, scope: dict[str, Any],
                 body: bytes, n: int) -> tuple[float, float]:
    if variant == "no hooks":
        with hooks_removed():
            return await _slice(app, scope, body, n)
    if variant == "off":
        return await _slice(app, scope, body, n)
    on.start()
    try:
        return await _slice(app, scope, body, n)
    finally:
        on.close()  # flushes the last batch (outside the timing)


Figures = dict[str, dict[str, dict[str, list[float]]]]  # workload -> variant -> wall/cpu -> runs


async def measure(runs: int, n_cached: int, n_full: int, work: Path, endpoint: str) -> Figures:
    data_dir = work / "data"
    link_models(data_dir)
    app = create_app(Settings(data_dir=data_dir))
    configure_logging("info", "json", stream=open(os.devnull, "w"))
    on = tracing.Tracing(ObservabilitySettings(otlp_endpoint=endpoint))
    scope = _scope("POST", "/api/chat/query", [(b"content-type", b"application/json")])
    workloads = {"cached answer": (QUESTION, n_cached), "full answer": (UNCACHED, n_full)}
    out: Figures = {w: {v: {"wall": [], "cpu": [], "paired": []} for v in VARIANTS}
                    for w in workloads}
    async with LifespanManager(app, startup_timeout=180) as manager:
        asgi = manager.app
        await _prepare(asgi)
        for body, _ in workloads.values():
            for _ in range(30):  # fills the exact cache; warms everything up
                assert await _call(asgi, scope, body) == 200
        rng = random.Random(7)
        slices = 20  # variants take turns, so drift in the machine's load hits all alike
        for _ in range(runs):
            for workload, (body, n) in workloads.items():
                totals = {v: [0.0, 0.0] for v in VARIANTS}
                per = max(1, n // slices)
                this_slice: dict[str, float] = {}
                for _ in range(slices):
                    # A random order each slice: with a fixed cycle, each variant would always
                    # follow the same one and inherit its leftovers.
                    for variant in rng.sample(VARIANTS, len(VARIANTS)):
                        gc.collect()  # every slice starts without another's garbage
                        wall, cpu = await _timed(variant, on, asgi, scope, body, per)
                        totals[variant][0] += wall
                        totals[variant][1] += cpu
                        this_slice[variant] = cpu
                    for variant in ("off", "on"):  # paired with its neighbour in time
                        out[workload][variant]["paired"].append(
                            this_slice[variant] / this_slice["no hooks"])
                for variant, (wall, cpu) in totals.items():
                    out[workload][variant]["wall"].append(wall / (per * slices) * 1e6)
                    out[workload][variant]["cpu"].append(cpu / (per * slices) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="cached answers per variant "
                        "and run (full answers: a tenth)")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    calls = [hook_ns(200_000) for _ in range(args.runs)]
    print(f"\nhooks while off, 200,000 calls x {args.runs} runs (median):")
    for name in calls[0]:
        print(f"  {name:<28} {statistics.median(c[name] for c in calls):7.0f} ns")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = [PY, "-m", "metis_rag.devtools.otlp_receiver", "--port", str(port)]
    with process(receiver, url), tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(args.runs, args.requests, max(30, args.requests // 10),
                                  Path(tmp), url))
        exported = httpx.get(url).json()
    for workload, variants in figures.items():
        med = {v: {k: statistics.median(x) if x else 1.0 for k, x in f.items()}
               for v, f in variants.items()}
        base = med["no hooks"]
        print(f"\n{workload}, {args.runs} runs (median), per request:")
        for variant, m in med.items():
            print(f"  {variant:<9} wall {m['wall']:8.1f} us ({1e6 / m['wall']:7.1f} req/s)  "
                  f"CPU {m['cpu']:8.1f} us  CPU ratio {m['cpu'] / base['cpu']:.4f} "
                  f"({m['cpu'] - base['cpu']:+.1f} us)")
        # Each slice's ratio to the "no hooks" slice next to it in time, median over every
        # slice of every run: steadier than the ratio of totals on a busy machine.
        off, on = med["off"]["paired"] - 1, med["on"]["paired"] - 1
        print(f"  paired slices ({len(variants['off']['paired'])}): tracing off costs "
              f"{100 * off:+.2f} % CPU per request (target <= 1 %)"
              f"{'' if off <= 0.01 else '  MISSED'}; on costs {100 * on:+.1f} %")
    print(f"\nthe receiver decoded {exported['spans']} spans in {exported['requests']} exports")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
