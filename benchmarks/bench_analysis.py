"""Document analysis: how right the offline type and topics are, and what analysis costs.

    python benchmarks/bench_analysis.py [--docs 40] [--words 400] [--runs 3]
        [--split test|calibration|all] [--llm-latency-ms 0 250 1000] [--llm-docs 8]

1. Quality, on the labelled set of analysis_data.py (files Debian installs; tuned on the
   calibration split only): type accuracy per label, and two topic figures: `name_hit`, the
   share of documents whose own name (man page, module, file stem; counted where the name
   occurs 3+ times in the text) is among their topics, and `noise`, the share of topics that
   are markup (":func:", "versionadded", URL pieces), identifiers such as "p1990", pieces of a
   word broken at a line-end hyphen, or two-word phrases whose words never stand side by side
   on one line of the text.
2. Offline cost: each run ingests --docs documents of the stdlib-docstring corpus one at a time
   into a fresh Metis (ONNX embedder, SQLite), timing the ingestion (parse, chunk, embed, write)
   and then the analysis step (read the chunks back, analyse, store) of each. The first analysis
   of a process loads wordfreq's table and is reported apart.
3. LLM cost: the same with the fake LLM server (OpenAI protocol) answering every analysis with
   a structured JSON object after --llm-latency-ms; the added time per document, the tokens
   the server counted, and when the document became searchable (before the analysis).
Figures are medians over documents, then over runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import analysis_data  # noqa: E402
import corpus  # noqa: E402
from harness import median, new_data_dir, percentile, write_result  # noqa: E402
from metis_rag.agent.analysis import analyse_offline, classify_type  # noqa: E402
from metis_rag.agent.analysis_step import analyse_document  # noqa: E402
from metis_rag.config import AnalysisSettings, LLMSettings, Settings  # noqa: E402
from metis_rag.devtools.fake_llm import FakeLLMServer  # noqa: E402
from metis_rag.ingest.pipeline import Upload  # noqa: E402
from metis_rag.services import open_services  # noqa: E402

_MARKUP = {"versionadded", "versionchanged", "sectionauthor", "toctree", "func", "meth", "attr",
           "exc", "mod", "https", "http", "www", "org", "com", "rst"}
_IDENT = re.compile(r"[a-z]{1,2}\d|.*\d{4,}.*")


def _noisy(topic: str, text: str) -> bool:
    words = topic.split()
    if any(w in _MARKUP or _IDENT.fullmatch(w) for w in words):
        return True
    if any(re.search(r"(?i)(?:[-\u2010\u00ad]\n\s*" + re.escape(w) + r"\b|\b" + re.escape(w)
                     + r"[-\u2010\u00ad]\n)", text) for w in words):
        return True  # a piece of a word broken across lines
    if len(words) == 2:
        line = re.compile(r"(?im)(?<![\w-])" + re.escape(words[0]) + r"[ ]" + re.escape(words[1])
                          + r"(?![\w-])")
        return line.search(text) is None
    return False


def _name(doc: analysis_data.Doc) -> str:
    stem = doc.filename.lower().split(".rst")[0]
    stem = re.sub(r"(\.(txt|conf|py|csv|json))+$", "", stem)
    return re.split(r"[._]", stem)[-1] if "." in stem else stem


def quality(split: str) -> dict[str, object]:
    docs = [d for d in analysis_data.load() if split == "all" or d.split == split]
    right: dict[str, list[int]] = {}
    misses, named, hits, topics, noisy = [], 0, 0, 0, 0
    for d in docs:
        mime = {"csv": "text/csv", "json": "application/json"}.get(
            d.filename.rsplit(".", 1)[-1], "text/plain")
        got = classify_type(d.filename, mime, d.text)
        right.setdefault(d.label, []).append(int(got == d.label))
        if got != d.label:
            misses.append(f"{d.path}: {got}")
        found = analyse_offline(d.filename, mime, d.text, AnalysisSettings()).topics
        topics += len(found)
        noisy += sum(_noisy(t, d.text) for t in found)
        name = _name(d)
        if len(name) > 2 and len(re.findall(r"(?i)(?<![\w-])" + re.escape(name) + r"(?![\w-])",
                                             d.text)) >= 3:
            named += 1
            hits += any(name in t.split() for t in found)
    total = sum(len(v) for v in right.values())
    return {"split": split, "documents": total,
            "type_accuracy": round(sum(sum(v) for v in right.values()) / total, 4),
            "per_label": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(right.items())},
            "misses": misses, "name_hit": round(hits / max(named, 1), 4),
            "named_documents": named, "topic_noise": round(noisy / max(topics, 1), 4)}


async def llm_run(tmp: Path, run: int, docs: list[Path], latency_ms: float
                  ) -> dict[str, float]:
    answer = ('{"type": "manual", "language": "en", "topics": ["heap queue", "bisect", '
              '"sorted list", "priority queue"], "summary": "The module keeps a list in '
              'sorted order. It documents its functions with examples."}')
    with FakeLLMServer(latency_ms=latency_ms, answer=answer) as fake:
        settings = Settings(data_dir=new_data_dir(tmp, f"llm{latency_ms:g}-{run}"),
                            llm=LLMSettings(provider="openai", url=fake.url, model="fake",
                                            timeout_s=30))
        ingest_ms, analyse_ms, prompt, completion = [], [], [], []
        async with open_services(settings) as services:
            assert services.analyzer is not None
            for path in docs:
                t = time.perf_counter()
                report = await services.ingestor.ingest([Upload(path.name, path.read_bytes())],
                                                        "bench")
                ingest_ms.append((time.perf_counter() - t) * 1000)
                doc_id = report.results[0].document_id
                assert doc_id
                t = time.perf_counter()
                done = await analyse_document(services.sessions, services.analyzer, doc_id)
                analyse_ms.append((time.perf_counter() - t) * 1000)
                assert done is not None and done.method == "llm", done
                prompt.append(float(done.details["prompt_tokens"]))
                completion.append(float(done.details["completion_tokens"]))
    return {"ingest_ms_p50": median(ingest_ms), "analyse_ms_p50": median(analyse_ms),
            "analyse_ms_p95": percentile(analyse_ms, 0.95),
            "prompt_tokens_p50": median(prompt), "completion_tokens_p50": median(completion),
            "added_pct_of_ingestion": 100 * median(analyse_ms) / median(ingest_ms)}


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
    parser.add_argument("--split", choices=("test", "calibration", "all"), default="test")
    parser.add_argument("--llm-latency-ms", type=float, nargs="*", default=[0.0, 250.0, 1000.0])
    parser.add_argument("--llm-docs", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    llm: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus.write_corpus(Path(tmp) / "docs", args.docs, args.words)
        runs = [await one_run(Path(tmp), r, docs) for r in range(args.runs)]
        for latency in args.llm_latency_ms:
            per_run = [await llm_run(Path(tmp), r, docs[:args.llm_docs], latency)
                       for r in range(args.runs)]
            llm[f"latency {latency:g} ms"] = {key: round(median([r[key] for r in per_run]), 2)
                                              for key in per_run[0]}
    checked = quality(args.split)  # after the runs: the first analysis loads wordfreq
    figures = {key: round(median([r[key] for r in runs]), 3) for key in runs[0]
               if key != "first_analyse_ms"}
    figures["first_analyse_ms (wordfreq load)"] = round(runs[0]["first_analyse_ms"], 1)
    figures["analysis_share_of_ingestion_pct"] = round(100 * figures.pop("ratio"), 2)
    figures["runs"] = [{k: round(v, 2) for k, v in r.items()} for r in runs]
    figures["quality"] = checked
    figures["llm"] = llm
    write_result(args.json, {
        "title": f"Document analysis cost vs ingestion ({args.docs} docs of ~{args.words} "
                 f"words, median of {args.runs} runs)",
        "figures": figures, "targets": []})


if __name__ == "__main__":
    asyncio.run(main())
