"""One short question's embedding, layer by layer, as a semantic lookup pays for it.

    flock /tmp/metis-cpu.lock .venv/bin/python benchmarks/bench_query_embed.py [--calls 1000]

Each call embeds a different 10-word question (so the embedding cache always misses, as for a
new question), one at a time. Rows, each adding one layer of the server's stack
(`services.py`): the tokenizer alone; `embed_sync` (tokenizer + ONNX Runtime, this thread);
`OnnxEmbedder.embed` (the worker-thread hop); + `BatchingEmbedder` (a lone question in the
micro-batcher); + `CachedEmbedder` over the memory tier and a private `redis-server` (the
embedding cache's get before the model and set after it). Plus the first calls after `start()`,
which pay whatever the session has not warmed. Milliseconds, p50 / p95 / p99, median of --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from bench_cache import private_redis
from metis_rag.batching import BatchingEmbedder
from metis_rag.cache.levels import open_caches
from metis_rag.config import CacheSettings, EmbedSettings
from metis_rag.embed.cached import CachedEmbedder
from metis_rag.embed.onnx import OnnxEmbedder

WORDS = ("rotate", "keys", "server", "backup", "restore", "index", "socket", "policy", "quota",
         "proxy", "cluster", "replica", "token", "upload", "report", "schedule", "mirror",
         "archive", "tenant", "webhook", "bucket", "cipher", "daemon", "kernel", "ledger")


def questions(n: int, seed: int) -> list[str]:
    """`n` different questions of 10 words, about 14 tokens each."""
    rng = np.random.default_rng(seed)
    return [f"How do I {a} the {b} of a {c} {d} before {e}?"
            for a, b, c, d, e in (rng.choice(WORDS, 5) for _ in range(n))]


async def timed(calls: list[str], call: Callable[[str], Awaitable[Any]]) -> list[float]:
    out = []
    for q in calls:
        t = time.perf_counter()
        await call(q)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def one_run(settings: EmbedSettings, models: Path, redis_url: str, calls: int,
                  seed: int) -> dict[str, list[float]]:
    asks = questions(calls, seed)
    out: dict[str, list[float]] = {}
    onnx = OnnxEmbedder(settings, models)
    await onnx.start()
    out["first 5 after start"] = await timed(questions(5, seed + 1000), lambda q: onnx.embed([q]))
    tokenizer = onnx._tokenizer
    out["tokenizer"] = await timed(asks, lambda q: asyncio.sleep(0, tokenizer.encode(q)))
    out["embed_sync (this thread)"] = await timed(
        asks, lambda q: asyncio.sleep(0, onnx.embed_sync([q])))
    out["OnnxEmbedder.embed"] = await timed(asks, lambda q: onnx.embed([q]))
    batching = BatchingEmbedder(onnx, max_wait_ms=0)
    out["+ BatchingEmbedder"] = await timed(asks, lambda q: batching.embed([q]))
    async with AsyncExitStack() as stack:
        caches = await open_caches(CacheSettings(backend="redis", redis_url=redis_url),
                                   Path("/nonexistent"), onnx.dim, stack)
        cached = CachedEmbedder(batching, caches.embedding)
        fresh = questions(calls, seed + 1)  # not cached by the rows above
        out["+ CachedEmbedder (memory + Redis)"] = await timed(fresh, lambda q: cached.embed([q]))
    await batching.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=EmbedSettings().threads)
    p.add_argument("--query-threads", type=int, default=EmbedSettings().query_threads)
    a = p.parse_args()
    settings = EmbedSettings(threads=a.threads, query_threads=a.query_threads)
    models = harness.prepared_models()
    with private_redis() as redis_url:
        runs = [asyncio.run(one_run(settings, models, redis_url, a.calls, seed))
                for seed in range(a.runs)]
    print(f"one 10-word question, {a.calls} calls a run, ms p50 / p95 / p99, median of "
          f"{a.runs} runs (threads={a.threads}, query_threads={a.query_threads})")
    for row in runs[0]:
        cells = [statistics.median(harness.percentile(r[row], q) for r in runs)
                 for q in (0.50, 0.95, 0.99)]
        print(f"  {row:36} " + " / ".join(f"{c:7.3f}" for c in cells))


if __name__ == "__main__":
    main()
