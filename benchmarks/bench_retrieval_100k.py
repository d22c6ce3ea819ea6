"""Retrieval quality: hybrid (HNSW + FTS5 fused by RRF) against dense only, same index.

    python benchmarks/build_100k.py   # once
    python benchmarks/bench_retrieval_100k.py [--known-items 500]

Two question sets over one collection of 100,000 real-prose chunks (build_100k.py) into which
the 37 pages of benchmarks/cache_workload.py's handbook are ingested:
- paraphrased questions: the handbook's 148 questions (4 wordings per page), which must find
  their page among 100k distractors: accuracy@1 and MRR@10;
- known items: a 12-word span of a random corpus chunk must find a chunk holding that span
  (the corpus is made of overlapping windows, so several may): accuracy@1, recall@5/@10.
Also the mean retrieval latency of each mode. Decides METIS_RETRIEVAL__HYBRID's default.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_workload as wl
import harness
from metis_rag.config import CacheSettings, Settings
from metis_rag.ingest.pipeline import Upload
from metis_rag.services import Services, open_services


async def rank_of(services: Services, coll_id: int, query: str, target: set[int],
                  hybrid: bool) -> tuple[int | None, float]:
    vector = (await services.embedder.embed([query]))[0]
    t = time.perf_counter()
    found, _ = await services.retriever.retrieve(coll_id, query, vector, top_k=10, hybrid=hybrid)
    ms = (time.perf_counter() - t) * 1000
    ranks = [i for i, r in enumerate(found, start=1) if r.chunk.id in target]
    return (ranks[0] if ranks else None), ms


def scores(ranks: list[int | None]) -> tuple[float, float, float, float]:
    n = len(ranks)
    at1 = sum(r == 1 for r in ranks) / n
    at5 = sum(r is not None and r <= 5 for r in ranks) / n
    at10 = sum(r is not None for r in ranks) / n
    mrr = sum(1 / r for r in ranks if r is not None) / n
    return at1, at5, at10, mrr


async def main(a: argparse.Namespace) -> None:
    texts, vectors, _, _ = harness.load_100k()
    work = Path(tempfile.mkdtemp(prefix="metis-bench-retrieval-"))
    data_dir = harness.new_data_dir(work, "data")
    settings = Settings(data_dir=data_dir, cache=CacheSettings(enabled=False))
    await harness.insert_chunks(settings, texts, vectors)
    async with open_services(settings) as services:
        paths = wl.write_handbook(work / "handbook")
        report = await services.ingestor.ingest(
            [Upload(p.name, p.read_bytes()) for p in paths], "bench")
        page_chunks = {p.stem: set() for p in paths}
        for r in report.results:
            async with services.sessions() as session:
                from metis_rag.store import repo

                page_chunks[Path(r.filename).stem] = set(
                    await repo.chunk_ids_of(session, r.document_id or 0))
        coll_id, _ = await services.lookup.get("bench")
        rng = random.Random(11)
        picks = rng.sample(range(len(texts)), a.known_items)
        known = []
        for i in picks:
            words = texts[i].split()
            start = rng.randrange(0, max(1, len(words) - 12))
            span = " ".join(words[start : start + 12])
            holders = {j + 1 for j, text in enumerate(texts) if span in text}  # ids from 1
            known.append((span, holders))
        paraphrased = [(q, page_chunks[t.key]) for t in wl.TOPICS for q in t.questions]

        print(f"{len(texts)} corpus chunks + {len(paths)} handbook pages; {harness.machine()}")
        print(f"{'question set':28} {'mode':7} {'acc@1':>6} {'in top 5':>8} {'in top 10':>9} "
              f"{'MRR@10':>7} {'retrieve ms':>11}")
        for name, items in (("paraphrased (148)", paraphrased),
                            (f"known items ({a.known_items})", known)):
            for hybrid in (False, True):
                got = [await rank_of(services, coll_id, q, target, hybrid) for q, target in items]
                at1, at5, at10, mrr = scores([g[0] for g in got])
                ms = harness.median([g[1] for g in got])
                print(f"{name:28} {'hybrid' if hybrid else 'dense':7} {at1:6.3f} {at5:8.3f} "
                      f"{at10:9.3f} {mrr:7.3f} {ms:11.2f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--known-items", type=int, default=500)
    harness.prepared_models()
    asyncio.run(main(p.parse_args()))
