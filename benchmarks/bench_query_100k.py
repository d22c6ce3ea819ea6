"""Uncached extractive POST /api/chat/query latency at 100,000 chunks (target p95 <= 50 ms).

Loads the chunks and vectors built once by build_100k.py into a fresh SQLite database
(1,000 documents of 100 chunks), starts a real `metis serve` (whose start-up builds the HNSW
index from the database), then sends the held-out queries one at a time over HTTP with
`cache: false`, so every one is embedded, retrieved and answered.

    python benchmarks/build_100k.py   # once
    python benchmarks/bench_query_100k.py [--queries 300] [--runs 3] [--no-hybrid]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from metis_rag.config import Settings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-hybrid", action="store_true")
    a = p.parse_args()
    texts, vectors, queries, _ = harness.load_100k()
    queries = queries[: a.queries]
    harness.prepared_models()
    work = Path(tempfile.mkdtemp(prefix="metis-bench-100k-"))
    data_dir = harness.new_data_dir(work, "data")
    t = time.perf_counter()
    asyncio.run(harness.insert_chunks(Settings(data_dir=data_dir), texts, vectors))
    print(f"loaded {len(texts)} chunks into SQLite in {time.perf_counter() - t:.1f} s")

    env = {"METIS_RETRIEVAL__HYBRID": "false" if a.no_hybrid else "true"}
    t = time.perf_counter()
    with harness.metis_server(data_dir, env) as url:
        print(f"server ready (index built from the database) in {time.perf_counter() - t:.1f} s")
        client = httpx.Client(base_url=url, timeout=30)
        for q in queries[:20]:  # warm-up
            client.post("/api/chat/query", json={"message": q, "collection": "bench"})
        p50s, p95s, server95, stages = [], [], [], []
        for run in range(a.runs):
            lat, srv = [], []
            for q in queries:
                t = time.perf_counter()
                r = client.post("/api/chat/query",
                                json={"message": q, "collection": "bench", "cache": False})
                lat.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                srv.append(body["timings_ms"]["total"])
                stages.append(body["timings_ms"])
            p50s.append(harness.percentile(lat, 0.50))
            p95s.append(harness.percentile(lat, 0.95))
            server95.append(harness.percentile(srv, 0.95))
            print(f"run {run + 1}: client p50 {p50s[-1]:.1f} ms, p95 {p95s[-1]:.1f} ms; "
                  f"server p95 {server95[-1]:.1f} ms", flush=True)
    mean = {k: statistics.mean(s[k] for s in stages) for k in ("embed", "retrieve", "generate")}
    print(f"\n100,000 chunks, hybrid={'off' if a.no_hybrid else 'on'}, {len(queries)} queries x "
          f"{a.runs} runs, sequential, extractive; {harness.machine()}")
    print(f"POST /api/chat/query: p50 {harness.median(p50s):.1f} ms, p95 {harness.median(p95s):.1f} ms "
          f"(target <= 50 ms); server-side p95 {harness.median(server95):.1f} ms")
    print("mean stage ms: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items()))


if __name__ == "__main__":
    main()
