"""Uncached extractive POST /api/chat/query latency at 100,000 chunks (target p95 <= 50 ms).

Loads the chunks and vectors built once by build_100k.py into a fresh SQLite database
(1,000 documents of 100 chunks), starts a real `metis serve` (whose start-up builds the HNSW
index from the database), then sends the held-out queries one at a time over HTTP.

    python benchmarks/build_100k.py   # once
    python benchmarks/bench_query_100k.py [--queries 300] [--runs 3] [--no-hybrid]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert

from metis_rag.config import Settings
from metis_rag.store.db import create_engine, migrate
from metis_rag.store.models import Chunk, Collection, Document

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


async def load(settings: Settings, texts: list[str], vectors: np.ndarray) -> None:
    engine = create_engine(settings)
    await migrate(engine)
    now = datetime.now(UTC)
    per_doc = 100
    async with engine.begin() as conn:
        await conn.execute(insert(Collection), [{"id": 1, "name": "bench", "version": 1,
                                                 "created_at": now, "updated_at": now}])
        docs = [
            {"id": d + 1, "collection_id": 1, "filename": f"doc{d:04d}.txt", "folder": "",
             "content_hash": hashlib.sha256(str(d).encode()).hexdigest(), "mime": "text/plain",
             "size_bytes": 1, "title": None, "tags": [], "status": "ready", "error": None,
             "chunk_count": per_doc, "created_at": now, "updated_at": now}
            for d in range(len(texts) // per_doc)
        ]
        await conn.execute(insert(Document), docs)
        for start in range(0, len(texts), 5000):
            rows = [
                {"document_id": i // per_doc + 1, "collection_id": 1, "position": i % per_doc,
                 "text": texts[i], "page": None, "section": None, "token_count": 60,
                 "embedding": vectors[i].astype("<f4").tobytes()}
                for i in range(start, min(start + 5000, len(texts)))
            ]
            await conn.execute(insert(Chunk), rows)
    await engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                return time.perf_counter() - t
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not start")


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-hybrid", action="store_true")
    a = p.parse_args()
    vectors = np.load(CACHE / "vectors_100k.npy")
    texts = [json.loads(ln) for ln in (CACHE / "chunks_100k.jsonl").open()]
    queries = [json.loads(ln) for ln in (CACHE / "queries.jsonl").open()][: a.queries]

    work = Path(tempfile.mkdtemp(prefix="metis-bench-100k-"))
    data_dir = work / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(CACHE / "model" / "models", target_is_directory=True)
    settings = Settings(data_dir=data_dir)
    t = time.perf_counter()
    asyncio.run(load(settings, texts, vectors))
    print(f"loaded {len(texts)} chunks into SQLite in {time.perf_counter() - t:.1f} s")

    port = free_port()
    env = {**os.environ, "METIS_DATA_DIR": str(data_dir), "METIS_PORT": str(port),
           "METIS_LOG_LEVEL": "warning",
           "METIS_RETRIEVAL__HYBRID": "false" if a.no_hybrid else "true"}
    proc = subprocess.Popen([sys.executable, "-m", "metis_rag", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"server ready (index built from the database) in {wait_ready(url, proc):.1f} s")
        client = httpx.Client(base_url=url, timeout=30)
        for q in queries[:20]:  # warm-up
            client.post("/api/chat/query", json={"message": q, "collection": "bench"})
        p50s, p95s, server95, stages = [], [], [], []
        for run in range(a.runs):
            lat, srv = [], []
            for q in queries:
                t = time.perf_counter()
                r = client.post("/api/chat/query",
                                json={"message": q, "collection": "bench", "cache": False}
                                if "cache" in _query_fields(client) else
                                {"message": q, "collection": "bench"})
                lat.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                srv.append(body["timings_ms"]["total"])
                stages.append(body["timings_ms"])
            p50s.append(percentile(lat, 50))
            p95s.append(percentile(lat, 95))
            server95.append(percentile(srv, 95))
            print(f"run {run + 1}: client p50 {p50s[-1]:.1f} ms, p95 {p95s[-1]:.1f} ms; "
                  f"server p95 {server95[-1]:.1f} ms", flush=True)
        mean = {k: statistics.mean(s[k] for s in stages) for k in ("embed", "retrieve", "generate")}
        print(f"\n100,000 chunks, hybrid={'off' if a.no_hybrid else 'on'}, {len(queries)} queries x "
              f"{a.runs} runs, sequential, extractive, {os.cpu_count()} cores")
        print(f"POST /api/chat/query: p50 {statistics.median(p50s):.1f} ms, "
              f"p95 {statistics.median(p95s):.1f} ms (target <= 50 ms); server-side p95 "
              f"{statistics.median(server95):.1f} ms")
        print("mean stage ms: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def _query_fields(client: httpx.Client, _cache: dict[str, set[str]] = {}) -> set[str]:  # noqa: B006
    if "fields" not in _cache:
        spec = client.get("/openapi.json").json()
        _cache["fields"] = set(spec["components"]["schemas"]["ChatQuery"]["properties"])
    return _cache["fields"]


if __name__ == "__main__":
    main()
