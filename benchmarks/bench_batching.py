"""Micro-batching of query embeddings (target: 32 concurrent queries >= 80% of one batch-32 encode).

    .venv/bin/python benchmarks/bench_batching.py [--runs 7] [--quick] [--json out.json]

Same process, fresh texts each time, the three interleaved in alternating order: (1) one
`embed` call of 32 texts, the reference; (2) 32 concurrent single-text calls through
`BatchingEmbedder`, as 32 requests would make; (3) the same 32 calls straight to the model,
unbatched. Throughput is 32 / wall time; the efficiency is (2) over (1). The same for a remote
backend (the fake OpenAI embeddings endpoint, its own process, 5 ms per call). Then open-loop
arrivals (Poisson, at 70% of the local model's unbatched capacity) compare latency with no
batching and with several batch windows (`max_wait_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from metis_rag.batching import BatchingEmbedder  # noqa: E402
from metis_rag.config import EmbedSettings  # noqa: E402
from metis_rag.embed import build_embedder  # noqa: E402
from metis_rag.embed.base import Embedder  # noqa: E402


def query_texts(n: int, offset: int) -> list[str]:
    topics = harness.questions(n + offset)
    return [variants[(i + offset) % 4] for i, variants in enumerate(topics[offset:])][:n]


async def timed(coro: Any) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


async def closed_loop(model: Embedder, runs: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"one_call_qps": [], "batched_qps": [], "unbatched_qps": []}
    texts = [t for variants in harness.questions(10_000) for t in variants]
    for run in range(runs):
        batcher = BatchingEmbedder(model, max_batch=32, max_wait_ms=0)
        order = list(out) if run % 2 == 0 else list(reversed(out))
        for i, name in enumerate(order):
            start = (run * 96 + i * 32) % (len(texts) - 32)  # fresh texts: no cache anywhere
            part = texts[start : start + 32]
            if name == "one_call_qps":
                call: Any = model.embed(part)
            elif name == "batched_qps":
                call = asyncio.gather(*(batcher.embed([t]) for t in part))
            else:
                call = asyncio.gather(*(model.embed([t]) for t in part))
            out[name].append(32 / await timed(call))
        # Not closed: that would close `model` too; an idle batcher holds no task.
    return out


async def open_loop(model: Embedder, rate_qps: float, seconds: float,
                    max_wait_ms: float | None) -> dict[str, float]:
    """Poisson arrivals for `seconds`; latency of each query (None = no batching)."""
    rng = random.Random(7)
    batcher = (BatchingEmbedder(model, max_batch=32, max_wait_ms=max_wait_ms)
               if max_wait_ms is not None else None)
    texts = query_texts(64, offset=500)
    latencies: list[float] = []

    async def one(text: str) -> None:
        started = time.perf_counter()
        await (batcher.embed([text]) if batcher else model.embed([text]))
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    started = time.perf_counter()
    next_at = started
    i = 0
    while next_at - started < seconds:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(texts[i % len(texts)])))
        i += 1
        next_at += rng.expovariate(rate_qps)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"p50_ms": harness.percentile(latencies, 0.5), "p95_ms": harness.percentile(latencies, 0.95),
            "qps": len(latencies) / elapsed,
            "mean_batch": batcher.stats.mean_batch_size if batcher else 1.0}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    harness.link_models(data_dir)
    model = build_embedder(EmbedSettings(), data_dir)
    await model.start()
    await model.embed(query_texts(32, offset=900))  # warm up
    runs = 3 if args.quick else args.runs
    closed = await closed_loop(model, runs)
    med = {k: harness.median(v) for k, v in closed.items()}
    efficiency = harness.median([b / o for b, o in zip(closed["batched_qps"],
                                                       closed["one_call_qps"], strict=True)])
    with harness.fake_llm(latency_ms=5) as url:
        remote = build_embedder(EmbedSettings(backend="openai", url=url, model="fake",
                                              batch_size=64), data_dir)
        await remote.start()
        remote_closed = await closed_loop(remote, runs)
        await remote.close()
    remote_med = {k: harness.median(v) for k, v in remote_closed.items()}
    rate = med["unbatched_qps"] * 0.7  # busy, below what the model manages one at a time
    seconds = 2.0 if args.quick else 5.0
    windows: dict[str, Any] = {}
    for label, wait in (("off", None), ("0ms", 0.0), ("2ms", 2.0), ("5ms", 5.0)):
        windows[label] = await open_loop(model, rate, seconds, wait)
    await model.close()
    figures: dict[str, Any] = {
        "one batch-32 call (queries/s)": round(med["one_call_qps"], 1),
        "32 concurrent, batched (queries/s)": round(med["batched_qps"], 1),
        "32 concurrent, unbatched (queries/s)": round(med["unbatched_qps"], 1),
        "remote backend (fake OpenAI, 5 ms a call): one call / batched / unbatched (q/s)": [
            round(remote_med[k], 1) for k in ("one_call_qps", "batched_qps", "unbatched_qps")
        ],
        f"open loop at {rate:.0f} q/s": {
            k: {m: round(x, 2) for m, x in v.items()} for k, v in windows.items()
        },
    }
    return {
        "name": "batching", "title": "Micro-batching of query embeddings",
        "figures": figures, "runs": {"local": closed, "remote": remote_closed},
        "targets": [harness.target("batch efficiency (batched / one call)", efficiency, 0.8)],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--data-dir", default=str(HERE / ".cache" / "batching"))
    a = p.parse_args()
    harness.write_result(a.json, asyncio.run(main(a)))
