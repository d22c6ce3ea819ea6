"""What a semantic level that cannot serve (no calibrated threshold meets
METIS_CACHE__SEMANTIC_MAX_ERROR, e.g. the default 0.01) cost per exact miss before it skipped its
lookups, and what the skip costs now.

    python benchmarks/bench_semantic_off.py [--questions 200] [--lookups 300] [--runs 3]

Per exact miss, the level used to run the lookup as a serving level does: one round trip to
the shared list (catch-up, nothing new), the nearest questions, the equivalence decision on
each candidate, and, for use_rag=false questions only, the embedding of the question. This
measures those steps on the real components (a private redis-server, a fresh PostgreSQL
database, the shipped embedder) with `--questions` earlier questions in the partition and
`--lookups` new ones, and the `serving` check + counter that replaces them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from bench_cache import private_redis
from metis_rag.cache import CacheBackend, RedisBackend
from metis_rag.cache.equivalence import Equivalence, Model
from metis_rag.cache.postgres import PostgresBackend
from metis_rag.cache.semantic import SemanticIndex
from metis_rag.config import EmbedSettings
from metis_rag.embed import build_embedder

PART = ("bench", "1", "1", "shape")
SUBJECTS = ["the API keys", "a user", "the backups", "the index", "a tenant", "the cache",
            "a collection", "the audit log", "a webhook", "the rate limit"]
ASKS = ["How do I rotate {}", "Who can delete {}", "When is {} refreshed",
        "Where are {} stored", "Why does {} fail after an upgrade", "How many {} may I keep",
        "What happens to {} on restart", "Can I export {} to CSV",
        "Which setting limits {}", "Is {} encrypted at rest"]
# Earlier questions and new ones name other products: none asks what an earlier one did.
OLD_PLACES = ["the console", "the CLI", "the web UI", "the Python SDK", "the REST API",
              "Kubernetes", "Docker", "the staging cluster", "the mobile app", "Terraform"]
NEW_PLACES = ["the admin panel", "the Go client", "Helm", "the desktop app", "Ansible",
              "the billing portal", "the test cluster", "the Java SDK", "GraphQL", "Slack"]


def questions(n: int, places: list[str]) -> list[str]:
    every = [f"{a.format(s)} in {p}?" for p in places for a in ASKS for s in SUBJECTS]
    assert n <= len(every)
    return every[:: max(1, len(every) // n)][:n]


async def timed(op: Callable[[], Awaitable[object]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await op()
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(times: list[float], p: float) -> float:
    return sorted(times)[min(len(times) - 1, int(len(times) * p))]


async def one_run(log: CacheBackend, old: list[str], new: list[str],
                  vec: dict[str, np.ndarray]) -> dict[str, list[float]]:
    await log.clear("semantic:bench:")
    serving = SemanticIndex(384, 50_000, Equivalence(Model.load(), 0.2), log=log, ttl_s=3600)
    off = SemanticIndex(384, 50_000, Equivalence(Model.load(), 0.01), log=log, ttl_s=3600)
    assert serving.serving and not off.serving
    for i, q in enumerate(old):
        await serving.add(PART, vec[q], f"key-{i}", q)
    it = iter(new)

    async def lookup() -> None:  # what the off level ran before: the serving level's path
        q = next(it)
        await serving.match(PART, vec[q], q)

    async def skip() -> None:  # what it runs now (`ChatService._cached_answer`)
        if not off.serving:
            off.skip()

    result = {"lookup": await timed(lookup, len(new)), "skip": await timed(skip, len(new))}
    # At 0.2 some of them are (wrongly) hits, which stop judging early: at 0.01 each lookup
    # judged all its candidates, so this slightly understates what was spent.
    result["hits"] = [float(serving.hits)]
    await log.clear("semantic:bench:")
    return result


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=200, help="earlier questions in the list")
    p.add_argument("--lookups", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-postgres", action="store_true")
    a = p.parse_args()
    old, new = questions(a.questions, OLD_PLACES), questions(a.lookups, NEW_PLACES)
    embedder = build_embedder(EmbedSettings(), harness.prepared_models().parent)
    await embedder.start()
    vec = dict(zip(old + new, await embedder.embed(old + new), strict=True))
    it = iter(new * a.runs)
    embed_runs = []
    for _ in range(a.runs):  # one question at a time, as a request embeds it
        embed_runs.append(await timed(lambda: embedder.embed([next(it)]), a.lookups))
    await embedder.close()

    backends: list[tuple[str, Callable[[], Awaitable[tuple[CacheBackend, Callable]]]]] = []
    with private_redis() as url:
        async def redis() -> tuple[CacheBackend, Callable]:
            backend = RedisBackend(url, namespace="bench:", timeout_s=1.0)
            await backend.start()
            return backend, backend.close

        backends.append(("redis", redis))
        if not a.no_postgres:
            backends.append(("postgres", postgres))
        print(f"{a.questions} earlier questions, {a.lookups} missing lookups per run, "
              f"{a.runs} runs; ms per exact miss, p50 / p95 / mean (median of runs)")
        for name, open_backend in backends:
            backend, close = await open_backend()
            try:
                runs = [await one_run(backend, old, new, vec) for _ in range(a.runs)]
            finally:
                await close()
            for step in ("lookup", "skip"):
                report(f"{name}: {'semantic lookup (before)' if step == 'lookup' else 'skip (now)'}",
                       [r[step] for r in runs])
            print(f"  (hits among the lookups at bound 0.2, judged fewer candidates: "
                  f"{[int(r['hits'][0]) for r in runs]})")
    report("embedding one question (before, use_rag=false only)", embed_runs)


async def postgres() -> tuple[CacheBackend, Callable]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from metis_rag.devtools.pgvector_server import start_pgvector_server
    from metis_rag.store.db import migrate

    server = start_pgvector_server()
    name = await server.create_database("metis_bench")
    engine = create_async_engine(server.url(name))
    await migrate(engine)

    async def close() -> None:
        await engine.dispose()
        await server.drop_database(name)
        server.close()

    return PostgresBackend(engine), close


def report(label: str, runs: list[list[float]]) -> None:
    med = [statistics.median(f(r) for r in runs) for f in
           (lambda r: pct(r, 0.5), lambda r: pct(r, 0.95), statistics.fmean)]
    print(f"{label:58s} {med[0]:8.4f} / {med[1]:8.4f} / {med[2]:8.4f}")


if __name__ == "__main__":
    asyncio.run(main())
