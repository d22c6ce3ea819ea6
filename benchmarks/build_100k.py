"""Embed a 100,000-chunk real-prose corpus once and keep it under benchmarks/.cache/.

The 100k benchmarks (vector search, HTTP query latency) reuse these vectors instead of
spending an hour re-embedding; the store, the index and the HTTP path stay the real ones.
Chunks are 40-word windows of the standard library's docstrings (benchmarks/corpus.py);
queries are 1,000 held-out windows of 12 words. Usage: python benchmarks/build_100k.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from metis_rag.config import EmbedSettings
from metis_rag.embed import build_embedder

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def texts(n: int, n_queries: int) -> tuple[list[str], list[str]]:
    import sys

    sys.path.insert(0, str(HERE))
    import corpus

    chunks = corpus.chunks_of_words(n + n_queries, words=40)
    base, held_out = chunks[:n], chunks[n:]
    queries = [" ".join(c.split()[5:17]) for c in held_out]
    return base, queries


async def main(n: int, n_queries: int, model_dir: Path) -> None:
    CACHE.mkdir(exist_ok=True)
    base, queries = texts(n, n_queries)
    embedder = build_embedder(EmbedSettings(batch_size=64), model_dir)
    await embedder.start()
    t = time.perf_counter()
    parts = []
    for start in range(0, len(base), 4096):
        parts.append(await embedder.embed(base[start : start + 4096]))
        done = start + len(parts[-1])
        rate = done / (time.perf_counter() - t)
        print(f"{done}/{len(base)} chunks, {rate:.0f}/s", flush=True)
    vectors = np.vstack(parts).astype(np.float32)
    qvec = (await embedder.embed(queries)).astype(np.float32)
    await embedder.close()
    np.save(CACHE / "vectors_100k.npy", vectors)
    np.save(CACHE / "queries.npy", qvec)
    with (CACHE / "chunks_100k.jsonl").open("w") as f:
        for text in base:
            f.write(json.dumps(text) + "\n")
    with (CACHE / "queries.jsonl").open("w") as f:
        for text in queries:
            f.write(json.dumps(text) + "\n")
    print(f"wrote {vectors.shape} vectors and {qvec.shape} queries to {CACHE} "
          f"({embedder.model_id}) in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--model-dir", type=Path, default=CACHE / "model")
    a = p.parse_args()
    asyncio.run(main(a.n, a.queries, a.model_dir))
