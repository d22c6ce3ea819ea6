"""What document analysis (offline: language, type, tf-idf keywords, extractive summary) costs
per document, next to what ingesting the document costs.

    python benchmarks/bench_analysis.py [--docs 40] [--words 400] [--runs 3]

Each run ingests --docs documents of the stdlib-docstring corpus one at a time into a fresh
Metis (ONNX embedder, SQLite), timing the ingestion (parse, chunk, embed, write) and then the
analysis step (read the chunks back, analyse, store) of each. The first analysis of a process
loads wordfreq's table and is reported apart. Figures are medians over documents, then over runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import corpus  # noqa: E402
from harness import median, new_data_dir, percentile, write_result  # noqa: E402
from metis_rag.agent.analysis_step import analyse_document  # noqa: E402
from metis_rag.config import Settings  # noqa: E402
from metis_rag.ingest.pipeline import Upload  # noqa: E402
from metis_rag.services import open_services  # noqa: E402


async def one_run(tmp: Path, run: int, docs: list[Path]) -> dict[str, float]:
    data_dir = new_data_dir(tmp, f"run{run}")
    ingest_ms, analyse_ms = [], []
    first_ms = 0.0
    async with open_services(Settings(data_dir=data_dir)) as services:
        assert services.analyzer is not None
        for i, path in enumerate(docs):
            upload = Upload(path.name, path.read_bytes())
            t = time.perf_counter()
            report = await services.ingestor.ingest([upload], "bench")
            ingest_ms.append((time.perf_counter() - t) * 1000)
            doc_id = report.results[0].document_id
            assert doc_id
            t = time.perf_counter()
            done = await analyse_document(services.sessions, services.analyzer, doc_id)
            ms = (time.perf_counter() - t) * 1000
            assert done is not None and done.method == "offline"
            if i == 0 and run == 0:
                first_ms = ms
            else:
                analyse_ms.append(ms)
    return {"ingest_ms_p50": median(ingest_ms), "analyse_ms_p50": median(analyse_ms),
            "analyse_ms_p95": percentile(analyse_ms, 0.95), "first_analyse_ms": first_ms,
            "ratio": median(analyse_ms) / median(ingest_ms)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus.write_corpus(Path(tmp) / "docs", args.docs, args.words)
        runs = [await one_run(Path(tmp), r, docs) for r in range(args.runs)]
    figures = {key: round(median([r[key] for r in runs]), 3) for key in runs[0]
               if key != "first_analyse_ms"}
    figures["first_analyse_ms (wordfreq load)"] = round(runs[0]["first_analyse_ms"], 1)
    figures["analysis_share_of_ingestion_pct"] = round(100 * figures.pop("ratio"), 2)
    figures["runs"] = [{k: round(v, 2) for k, v in r.items()} for r in runs]
    write_result(args.json, {
        "title": f"Document analysis cost vs ingestion ({args.docs} docs of ~{args.words} "
                 f"words, median of {args.runs} runs)",
        "figures": figures, "targets": []})


if __name__ == "__main__":
    asyncio.run(main())
