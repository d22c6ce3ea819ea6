"""Latency of the cache backends and of two-tier caches, one call at a time.

    .venv/bin/python benchmarks/bench_cache_backends.py [--redis-url URL] [--runs 3]

Each figure is the median over `--runs` runs of that run's percentile, in microseconds.
Raw backends store 1536 random bytes (a 384-dim float32 vector); tiered caches store the
vector itself, so their figures include the codec. A tiered get-hit is served by its memory
tier; "tier-2 hit" is a tiered get whose memory tier was just emptied. "redis, breaker open"
is a Redis backend whose server is unreachable and whose breaker has opened: every call is a miss
(or a dropped write) answered without a round trip, the figure tests/cache/test_redis.py used to
bound at 5 ms inside a unit test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from metis_rag.cache import DiskBackend, MemoryBackend, RedisBackend, TieredCache

KEYS = 1000
GETS = 3000
SETS = 1000
BATCHES = 300
BATCH = 32


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    samples = []
    for i in range(n):
        started = time.perf_counter_ns()
        await call(i)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


async def measure(store: Any, value: Any, second_tier_hit: bool) -> dict[str, list[float]]:
    keys = [f"bench:{i}" for i in range(KEYS)]
    await store.set_many(dict.fromkeys(keys, value))
    await timed(200, lambda i: store.get(keys[i % KEYS]))  # warm connections and caches
    result = {
        "get": await timed(GETS, lambda i: store.get(keys[(i * 7) % KEYS])),
        "set": await timed(SETS, lambda i: store.set(keys[(i * 13) % KEYS], value)),
        "get_many": await timed(
            BATCHES, lambda i: store.get_many([keys[(i * BATCH + j) % KEYS] for j in range(BATCH)])
        ),
    }
    if second_tier_hit:
        memory = store.backends[0]

        async def cold_get(i: int) -> None:
            await memory.clear()
            await store.get(keys[(i * 7) % KEYS])

        # clear() of a memory tier holding one entry costs next to nothing.
        result["tier-2 hit"] = await timed(GETS // 3, cold_get)
    for sample in result.values():
        assert sample
    return result


async def one_run(redis_url: str, directory: Path) -> dict[str, dict[str, list[float]]]:
    raw = os.urandom(1536)
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    namespace = f"metis-bench:{uuid.uuid4().hex}:"
    results = {}
    async with (
        DiskBackend(directory / uuid.uuid4().hex) as disk,
        RedisBackend(redis_url, namespace=namespace) as redis,
        DiskBackend(directory / uuid.uuid4().hex) as disk2,
        RedisBackend(redis_url, namespace=namespace + "t:") as redis2,
        # Nothing listens on port 1: start()'s ping fails and opens the breaker, and the
        # cool-down outlasts the run so that no probe is timed.
        RedisBackend("redis://127.0.0.1:1/0", namespace=namespace, failure_threshold=1,
                     cooldown_s=3600) as down,
    ):
        results["memory"] = await measure(MemoryBackend(), raw, False)
        results["disk (sqlite)"] = await measure(disk, raw, False)
        results["redis"] = await measure(redis, raw, False)
        results["tiered(memory, redis)"] = await measure(
            TieredCache([MemoryBackend(), redis2]), vector, True
        )
        results["tiered(memory, disk)"] = await measure(
            TieredCache([MemoryBackend(), disk2]), vector, True
        )
        results["redis, breaker open"] = await measure(down, raw, False)
        assert not down.healthy and down.errors == 1, "the breaker did not stay open"
        if redis.errors or redis2.errors:
            print(f"warning: {redis.errors + redis2.errors} Redis calls failed or timed out")
        await redis.clear()
        await redis2.clear()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(max(3, args.runs)):
            runs.append(asyncio.run(one_run(args.redis_url, Path(tmp))))

    ops = ["get", "set", "get_many", "tier-2 hit"]
    header = f"{'backend':<24}" + "".join(f"{op + ' p50':>15}{op + ' p99':>15}" for op in ops)
    print(f"median of {len(runs)} runs, microseconds per call; get_many = {BATCH} keys")
    print(header)
    print("-" * len(header))
    for name in runs[0]:
        cells = []
        for op in ops:
            if op not in runs[0][name]:
                cells.append(f"{'-':>15}{'-':>15}")
                continue
            p50 = statistics.median(percentile(run[name][op], 0.50) for run in runs)
            p99 = statistics.median(percentile(run[name][op], 0.99) for run in runs)
            cells.append(f"{p50:>15.1f}{p99:>15.1f}")
        print(f"{name:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
