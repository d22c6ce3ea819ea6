"""Ingestion as background tasks vs the synchronous pipeline, on the same small documents.

    python benchmarks/bench_ingest_tasks.py [--docs 1000] [--words 120] [--runs 3]

The synchronous pipeline is `streaming.ingest_stream` (what `metis ingest` ran before tasks):
one stream, parsing pipelined with embedding, chunks of many documents per model batch. The
task version submits one `ingest_document` task per file at once to the embedded engine (as
`metis ingest` and `POST /api/documents` now do) and waits for all of them. Prints wall time
and CPU time (user + system of the process, all threads) of each, median of --runs, and the
ratios tasks / synchronous.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import corpus  # noqa: E402
from metis_rag.config import CacheSettings, Settings, TaskSettings  # noqa: E402
from metis_rag.ingest.pipeline import Upload  # noqa: E402
from metis_rag.services import open_services  # noqa: E402
from metis_rag.tasks.types import TaskSpec  # noqa: E402
from streaming import ingest_stream  # noqa: E402


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def settings_for(data_dir: Path, models: Path, concurrency: int) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(models, target_is_directory=True)
    # No cache: both sides parse and embed everything; no load shedding: measure the engine.
    return Settings(data_dir=data_dir, cache=CacheSettings(enabled=False),
                    tasks=TaskSettings(concurrency=concurrency, min_concurrency=concurrency))


async def synchronous(docs: list[Path], settings: Settings) -> tuple[float, float, int]:
    async with open_services(settings, role="client") as services:
        uploads = (Upload(p.name, p.read_bytes()) for p in docs)
        t, c = time.perf_counter(), cpu_s()
        report = await ingest_stream(services.ingestor, services.vectors, uploads, "bench")
        return time.perf_counter() - t, cpu_s() - c, report.chunks


async def as_tasks(docs: list[Path], settings: Settings) -> tuple[float, float, int]:
    async with open_services(settings) as services:
        t, c = time.perf_counter(), cpu_s()
        specs = [TaskSpec("ingest_document", params={
            "collection": "bench", "filename": p.name, "folder": "", "tags": [], "path": str(p)})
            for p in docs]
        ids = [task.id for task in await services.tasks.submit(specs)]
        done = await services.tasks.wait(ids, timeout_s=3600, poll_s=0.05)
        seconds, cpu = time.perf_counter() - t, cpu_s() - c
        assert all(d.status == "completed" for d in done.values()), "a task failed"
        return seconds, cpu, sum(d.result["chunks"] for d in done.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--words", type=int, default=120, help="words per document")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--models", default=os.environ.get("METIS_TEST_CACHE", str(
        HERE.parent / ".pytest_cache" / "metis-models")) + "/models")
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float, int]]] = {"sync": [], "tasks": []}
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus.write_corpus(Path(tmp) / "docs", args.docs, args.words)
        for run in range(args.runs):
            for name, fn in (("sync", synchronous), ("tasks", as_tasks)):
                settings = settings_for(Path(tmp) / f"{name}{run}", Path(args.models),
                                        args.concurrency)
                results[name].append(asyncio.run(fn(docs, settings)))
    med = statistics.median
    print(f"{args.docs} documents of ~{args.words} words, median of {args.runs} runs")
    for name, label in (("sync", "synchronous ingest_stream"), ("tasks", "one task per document")):
        wall, cpu, chunks = (med(r[i] for r in results[name]) for i in range(3))
        print(f"  {label:28s} wall {wall:7.2f} s   CPU {cpu:7.2f} s   {chunks:.0f} chunks   "
              f"{args.docs / wall:6.1f} docs/s")
    wall = med(r[0] for r in results["tasks"]) / med(r[0] for r in results["sync"])
    cpu = med(r[1] for r in results["tasks"]) / med(r[1] for r in results["sync"])
    print(f"  tasks / synchronous: wall {wall:.2f}x, CPU {cpu:.2f}x")


if __name__ == "__main__":
    main()
