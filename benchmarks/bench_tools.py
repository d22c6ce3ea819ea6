"""The tool registry: how much of a repeated agent workload the `tool` cache serves, what a
hit and a miss cost, and the registry's own overhead per call.

    python benchmarks/bench_tools.py [--docs 40] [--sessions 300] [--templates 40] [--seed 7]

A real Metis (ONNX embedder, SQLite, the default memory + disk cache tiers) ingests --docs
documents of the stdlib-docstring corpus, each analysed offline. An agent session is four tool
calls: rag_search (a question about one corpus topic), list_documents (by one of the topics the
analysis found), summarize_document (a document) and calculator (an expression). Sessions are
drawn with a Zipf(1.1) law from --templates distinct sessions, as repeated users and
repeated plans do; halfway an upload bumps the collection's version, so the document tools
start cold again. Target: >= 50 % of tool calls served from the tool cache.

Overhead: `ToolRegistry.call` against calling `tool.run` directly, on a tool that does
nothing (uncached: schema check, timeout, metering), and a cache hit on that tool.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import corpus  # noqa: E402
from harness import median, new_data_dir, percentile, target, write_result  # noqa: E402
from metis_rag.agent.analysis_step import analyse_document  # noqa: E402
from metis_rag.agent.registry import ToolRegistry, build_registry  # noqa: E402
from metis_rag.agent.tools import ToolCall, ToolContext, ToolResult, ToolSpec  # noqa: E402
from metis_rag.cache.memory import MemoryBackend  # noqa: E402
from metis_rag.cache.tiered import TieredCache  # noqa: E402
from metis_rag.config import Settings  # noqa: E402
from metis_rag.ingest.pipeline import Upload  # noqa: E402
from metis_rag.services import Services, open_services  # noqa: E402

CTX = ToolContext(tenant="default", collection="bench", namespace="default")


class Noop:
    spec = ToolSpec("noop", "Does nothing.", {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        cache_ttl_s=60.0)

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult("ok")


async def ingest(services: Services, docs: list[Path]) -> list[str]:
    ids = []
    for path in docs:
        report = await services.ingestor.ingest([Upload(path.name, path.read_bytes())], "bench")
        doc_id = report.results[0].document_id
        assert doc_id and services.analyzer is not None
        await analyse_document(services.sessions, services.analyzer, doc_id)
        ids.append(doc_id)
    return ids


async def templates(services: Services, registry: ToolRegistry, doc_ids: list[str], n: int,
                    rng: random.Random) -> list[list[ToolCall]]:
    listed = await registry.call(ToolCall("list_documents", {"limit": 50}), CTX)
    topics = sorted({t for d in listed.data["documents"] for t in d["topics"]})
    titles = [t for t, _ in corpus.sections()]
    out = []
    for i in range(n):
        name = titles[(i * 7) % len(titles)].split(":")[-1].strip()
        out.append([
            ToolCall("rag_search", {"query": f"What does {name} do?"}),
            ToolCall("list_documents", {"topic": rng.choice(topics)}),
            ToolCall("summarize_document", {"document_id": rng.choice(doc_ids)}),
            ToolCall("calculator", {"expression": f"{rng.randint(2, 999)} * 1.{i} + 17"}),
        ])
    return out


def zipf_draws(n_templates: int, n: int, rng: random.Random, s: float = 1.1) -> list[int]:
    weights = [1 / (k + 1) ** s for k in range(n_templates)]
    return rng.choices(range(n_templates), weights=weights, k=n)


async def workload(services: Services, registry: ToolRegistry, sessions: list[list[ToolCall]],
                   extra_doc: Path) -> dict[str, Any]:
    by_tool: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    hits = Counter()
    calls = Counter()
    errors = 0
    for i, session in enumerate(sessions):
        if i == len(sessions) // 2:  # an upload: document tools' entries become unreachable
            await ingest(services, [extra_doc])
        for call in session:
            result = await registry.call(call, CTX)
            errors += result.error is not None
            calls[call.name] += 1
            level = "hit" if result.cache_level == "tool" else "miss"
            hits[call.name] += level == "hit"
            by_tool[call.name][level].append(result.elapsed_ms)
    total = sum(calls.values())
    out: dict[str, Any] = {"calls": total, "hits": sum(hits.values()), "errors": errors,
                           "hit_ratio": sum(hits.values()) / total}
    for name, levels in sorted(by_tool.items()):
        out[name] = {
            "calls": calls[name], "hit_ratio": round(hits[name] / calls[name], 3),
            **{f"{lvl}_p50_ms": round(percentile(v, 0.5), 3) for lvl, v in levels.items()},
            **{f"{lvl}_p95_ms": round(percentile(v, 0.95), 3) for lvl, v in levels.items()},
        }
    return out


async def overhead(n: int) -> dict[str, float]:
    noop = Noop()
    uncached = ToolRegistry([_Uncached()], cache=None)
    cached = ToolRegistry([noop], cache=TieredCache([MemoryBackend()], prefix="tool:"))
    call = ToolCall("noop", {"x": 1})
    runs: dict[str, list[float]] = {"direct_us": [], "registry_us": [], "cache_hit_us": []}
    await cached.call(call, CTX)  # the entry every later call hits
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            await noop.run(call.arguments, CTX)
        runs["direct_us"].append((time.perf_counter() - t) / n * 1e6)
        t = time.perf_counter()
        for _ in range(n):
            await uncached.call(call, CTX)
        runs["registry_us"].append((time.perf_counter() - t) / n * 1e6)
        t = time.perf_counter()
        for _ in range(n):
            await cached.call(call, CTX)
        runs["cache_hit_us"].append((time.perf_counter() - t) / n * 1e6)
    out = {k: round(median(v), 2) for k, v in runs.items()}
    out["registry_overhead_us"] = round(out["registry_us"] - out["direct_us"], 2)
    return out


class _Uncached(Noop):
    spec = ToolSpec("noop", "Does nothing.", Noop.spec.parameters)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--templates", type=int, default=40)
    parser.add_argument("--overhead-calls", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = new_data_dir(Path(tmp), "data")
        docs = corpus.write_corpus(Path(tmp) / "docs", args.docs + 1)
        async with open_services(Settings(data_dir=data_dir)) as services:
            doc_ids = await ingest(services, docs[:-1])
            registry = build_registry(services)
            pool = await templates(services, registry, doc_ids, args.templates, rng)
            sessions = [pool[k] for k in zipf_draws(len(pool), args.sessions, rng)]
            t = time.perf_counter()
            figures = await workload(services, registry, sessions, docs[-1])
            figures["workload_s"] = round(time.perf_counter() - t, 2)
            assert services.caches is not None
            level = (await services.caches.stats())["levels"]["tool"]
            figures["cache_stats_tool_level"] = {k: level[k] for k in ("hits", "misses",
                                                                       "hit_ratio")}
            await registry.close()
    figures["overhead"] = await overhead(args.overhead_calls)
    figures["distinct_sessions_drawn"] = len({id(s) for s in sessions})
    result = {
        "title": f"Tool cache and registry overhead ({args.sessions} sessions of 4 calls from "
                 f"{args.templates} templates, Zipf 1.1, {args.docs} docs)",
        "figures": figures,
        "targets": [target("share of tool calls served by the tool cache",
                           100 * figures["hit_ratio"], 50, unit=" %")],
    }
    write_result(args.json, result)


if __name__ == "__main__":
    asyncio.run(main())
