"""The multi-level cache on a repeated workload, through the real HTTP API (median of --runs).

    python benchmarks/bench_cache.py [--requests 500] [--runs 3] [--concurrency 8]

1. Threshold curve (offline, same embedder): the Zipf workload of benchmarks/cache_workload.py
   replayed through Metis's exact + semantic levels at each threshold: semantic hit rate and
   precision (share of semantic hits whose cached question has the same topic), plus the
   labelled-pairs view (share of question pairs above a threshold that ask the same thing).
2. GPTCache 0.1.x on the same sequence in the same run: the same MiniLM embeddings, faiss, and
   its default similarity evaluation (SearchDistanceEvaluation) at its default threshold (0.8),
   and at the threshold Metis uses.
3. Live: a real `metis serve` answering with an OpenAI-compatible LLM (our fake server, 1 s
   latency), a fresh data dir per run; the workload sent by --concurrency clients. Reports the
   hit ratio per level, LLM calls avoided (counted by the LLM server), semantic precision and
   p50/p95 latency of hits and misses.
4. Exact hits with Redis as the shared tier: server B answers questions server A cached (same
   database, separate processes), so B's hits come from Redis, not from its memory tier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_workload as wl
import harness
from metis_rag.cache.levels import SemanticIndex, entities, normalize_question
from metis_rag.config import CacheSettings, EmbedSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.embed import build_embedder

THRESHOLDS = (0.70, 0.75, 0.80, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
LLM_PATHS = ("/v1/chat/completions", "/api/chat")


async def embed_questions() -> dict[str, np.ndarray]:
    questions = list(wl.TOPIC_OF)
    embedder = build_embedder(EmbedSettings(), harness.MODEL_HOME)
    await embedder.start()
    vectors = await embedder.embed(questions)
    await embedder.close()
    return dict(zip(questions, vectors, strict=True))


def simulate(seq: list[str], vec: dict[str, np.ndarray], threshold: float,
             verify: float | None = None, top: dict[str, int] | None = None) -> dict[str, float]:
    """Metis's exact then semantic lookup, in request order, with the real `SemanticIndex`;
    with `verify`, a candidate in [verify, threshold) counts only if both questions retrieve
    the same top chunk (`top`), as `ChatService` does."""
    index = SemanticIndex(next(iter(vec.values())).shape[0], max_entries=100_000)
    seen: dict[str, str] = {}
    exact = semantic = correct = 0
    part = ("bench",)
    floor = min(threshold, verify) if verify is not None else threshold
    for q in seq:
        key = normalize_question(q)
        if key in seen:
            exact += 1
            continue
        hit = index.lookup(part, vec[q], floor)
        if hit is not None and entities(hit.question) == entities(q) and (
                hit.similarity >= threshold or (
                top is not None and top[q] == top[hit.question])):
            semantic += 1
            correct += wl.TOPIC_OF[hit.question] == wl.TOPIC_OF[q]
            continue
        seen[key] = q
        index.add(part, vec[q], key, q)
    n = len(seq)
    return {"exact": exact / n, "semantic": semantic / n, "avoided": (exact + semantic) / n,
            "precision": correct / semantic if semantic else 1.0}


async def top_sources(work: Path) -> dict[str, int]:
    """Each question's top chunk by Metis's own (hybrid) retrieval over the handbook."""
    from metis_rag.config import Settings
    from metis_rag.ingest.pipeline import Upload
    from metis_rag.services import open_services

    data_dir = harness.new_data_dir(work, "retrieval")
    settings = Settings(data_dir=data_dir, cache=CacheSettings(enabled=False))
    async with open_services(settings) as services:
        paths = wl.write_handbook(work / "handbook")
        await services.ingestor.ingest([Upload(p.name, p.read_bytes()) for p in paths], "hb")
        coll_id, _ = await services.lookup.get("hb")
        out = {}
        for q in wl.TOPIC_OF:
            vector = (await services.embedder.embed([q]))[0]
            found, _ = await services.retriever.retrieve(coll_id, q, vector, top_k=5)
            out[q] = found[0].chunk.id
    return out


def pair_curve(vec: dict[str, np.ndarray]) -> list[tuple[float, int, float]]:
    qs = list(vec)
    m = np.vstack([vec[q] for q in qs])
    sims = m @ m.T
    same = np.array([[wl.TOPIC_OF[a] == wl.TOPIC_OF[b] for b in qs] for a in qs])
    iu = np.triu_indices(len(qs), k=1)
    s, y = sims[iu], same[iu]
    out = []
    for t in THRESHOLDS:
        above = s >= t
        out.append((t, int(above.sum()), float(y[above].mean()) if above.any() else 1.0))
    return out


def gptcache_run(seq: list[str], vec: dict[str, np.ndarray], work: Path,
                 threshold: float | None) -> dict[str, float]:
    """GPTCache's get-then-put on the same sequence; answers are topic keys, so precision is
    exact. `threshold` None keeps GPTCache's default config (0.8)."""
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation import SearchDistanceEvaluation

    cache = Cache()
    if threshold is None:
        config = Config()
    else:
        # SearchDistanceEvaluation scores 4 - squared L2 (= 2 + 2 cos on unit vectors) and a
        # hit needs score >= 4 * similarity_threshold: cos >= t  <=>  threshold = (2 + 2t) / 4.
        config = Config(similarity_threshold=(2 + 2 * threshold) / 4)
    data_dir = Path(tempfile.mkdtemp(dir=work, prefix="gptcache-"))
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda text, **_: vec[text],
        data_manager=get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{data_dir}/gptcache.db"),
            VectorBase("faiss", dimension=384, index_path=str(data_dir / "faiss.index")),
            max_size=100_000,
        ),
        similarity_evaluation=SearchDistanceEvaluation(),
        config=config,
    )
    hits = correct = 0
    get_ms = []
    for q in seq:
        t = time.perf_counter()
        answer = get(q, cache_obj=cache)
        get_ms.append((time.perf_counter() - t) * 1000)
        if answer is not None:
            hits += 1
            correct += answer == wl.TOPIC_OF[q]
        else:
            put(q, wl.TOPIC_OF[q], cache_obj=cache)
    return {"avoided": hits / len(seq), "precision": correct / hits if hits else 1.0,
            "get_ms_p50": harness.percentile(get_ms, 0.50)}


async def send(url: str, seq: list[str], concurrency: int) -> list[dict[str, Any]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for q in seq:
        queue.put_nowait(q)
    out: list[dict[str, Any]] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            q = queue.get_nowait()
            t = time.perf_counter()
            r = await client.post("/api/chat/query", json={"message": q, "collection": "hb"})
            ms = (time.perf_counter() - t) * 1000
            body = r.json()
            out.append({"q": q, "status": r.status_code, "ms": ms,
                        "server_ms": body.get("timings_ms", {}).get("total"),
                        "cache": body.get("cache") or {}})

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return out


def llm_calls(fake: FakeLLMServer) -> int:
    requests = fake.stats()["requests"]
    return sum(requests.get(p, 0) for p in LLM_PATHS)


def summarize(rows: list[dict[str, Any]], calls: int) -> dict[str, float]:
    n = len(rows)
    levels = Counter(r["cache"].get("level") or "miss" for r in rows)
    sem = [r for r in rows if r["cache"].get("level") == "semantic"]
    good = sum(wl.TOPIC_OF[r["q"]] == wl.TOPIC_OF.get(r["cache"].get("original_question"))
               for r in sem)
    hits = [r for r in rows if r["cache"].get("level") in ("exact", "semantic")]
    misses = [r for r in rows if r["cache"].get("level") not in ("exact", "semantic")]
    exact_srv = [r["server_ms"] for r in rows if r["cache"].get("level") == "exact"]
    miss_srv = [r["server_ms"] for r in misses]
    out = {f"ratio_{k}": levels.get(k, 0) / n for k in ("exact", "semantic", "retrieval", "llm",
                                                       "miss")}
    out.update({
        "errors": sum(r["status"] != 200 for r in rows),
        "llm_avoided": 1 - calls / n,
        "semantic_precision": good / len(sem) if sem else 1.0,
        "semantic_hits": len(sem),
        "hit_p50": harness.percentile([r["ms"] for r in hits], 0.50),
        "hit_p95": harness.percentile([r["ms"] for r in hits], 0.95),
        "miss_p50": harness.percentile([r["ms"] for r in misses], 0.50),
        "miss_p95": harness.percentile([r["ms"] for r in misses], 0.95),
        "exact_server_p50": harness.percentile(exact_srv, 0.50),
        "exact_server_p95": harness.percentile(exact_srv, 0.95),
        "miss_server_p50": harness.percentile(miss_srv, 0.50),
    })
    return out


async def live_run(work: Path, run: int, seq: list[str], fake: FakeLLMServer,
                   concurrency: int, threshold: float, verify: float) -> dict[str, float]:
    data_dir = harness.new_data_dir(work, f"live{run}")
    handbook = wl.write_handbook(work / "handbook")
    env = {"METIS_LLM__PROVIDER": "openai", "METIS_LLM__URL": fake.url,
           "METIS_LLM__MODEL": "fake", "METIS_CACHE__SEMANTIC_THRESHOLD": str(threshold),
           "METIS_CACHE__SEMANTIC_VERIFY_THRESHOLD": str(verify)}
    with harness.metis_server(data_dir, env) as url:
        harness.upload_corpus(url, handbook[0].parent, "hb")
        before = llm_calls(fake)
        rows = await send(url, seq, concurrency)
        return summarize(rows, llm_calls(fake) - before)


async def redis_run(work: Path, run: int, fake: FakeLLMServer, redis_url: str) -> dict[str, float]:
    """Server A fills Redis; server B (same database, its own memory tier) then hits Redis."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    data_a = harness.new_data_dir(work, f"redis-a{run}")
    data_b = harness.new_data_dir(work, f"redis-b{run}")
    env = {"METIS_LLM__PROVIDER": "openai", "METIS_LLM__URL": fake.url, "METIS_LLM__MODEL": "fake",
           "METIS_CACHE__BACKEND": "redis", "METIS_CACHE__REDIS_URL": redis_url,
           "METIS_DATABASE_URL": f"sqlite+aiosqlite:///{data_a / 'metis.db'}"}
    questions = [t.questions[0] for t in wl.TOPICS]
    with harness.metis_server(data_a, env) as url_a:
        harness.upload_corpus(url_a, wl.write_handbook(work / "handbook")[0].parent, "hb")
        await send(url_a, questions, 8)
        with harness.metis_server(data_b, env) as url_b:
            from_redis = await send(url_b, questions, 1)
            from_memory = await send(url_b, questions, 1)
    ok = [r for r in from_redis if r["cache"].get("level") == "exact"]
    return {"redis_hits": len(ok) / len(questions),
            "redis_server_p50": harness.percentile([r["server_ms"] for r in ok], 0.50),
            "redis_server_p95": harness.percentile([r["server_ms"] for r in ok], 0.95),
            "memory_server_p50": harness.percentile([r["server_ms"] for r in from_memory], 0.50)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--llm-latency-ms", type=float, default=1000)
    p.add_argument("--threshold", type=float, default=CacheSettings().semantic_threshold)
    p.add_argument("--verify", type=float, default=CacheSettings().semantic_verify_threshold)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument("--no-gptcache", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="metis-bench-cache-"))
    harness.prepared_models()
    vec = asyncio.run(embed_questions())
    seq = wl.zipf_workload(a.requests)
    print(f"workload: {len(seq)} requests over {len(wl.TOPICS)} topics x 4 wordings, Zipf s=1.1, "
          f"40% reworded; {len(set(seq))} distinct questions; machine: {harness.machine()}\n")

    print("threshold curve (Metis exact + semantic, offline replay of the same sequence)")
    print(f"{'cosine >=':>9} {'semantic hits':>13} {'precision':>9} {'avoided':>8}   "
          f"{'pairs above':>11} {'pair precision':>14}")
    pairs = {t: (n, prec) for t, n, prec in pair_curve(vec)}
    for t in THRESHOLDS:
        s = simulate(seq, vec, t)
        print(f"{t:9.2f} {s['semantic']:13.1%} {s['precision']:9.3f} {s['avoided']:8.1%}   "
              f"{pairs[t][0]:11d} {pairs[t][1]:14.3f}")
    top = asyncio.run(top_sources(work))
    print(f"\nverified band (below the strict {a.threshold}: same top source required)")
    print(f"{'cosine >=':>9} {'semantic hits':>13} {'precision':>9} {'avoided':>8}")
    for v in (0.50, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90):
        s = simulate(seq, vec, a.threshold, v, top)
        print(f"{v:9.2f} {s['semantic']:13.1%} {s['precision']:9.3f} {s['avoided']:8.1%}")
    mine = simulate(seq, vec, a.threshold, a.verify, top)

    if not a.no_gptcache:
        g_default = gptcache_run(seq, vec, work, None)
        g_same = gptcache_run(seq, vec, work, a.threshold)
        print("\nsame sequence, same embeddings: calls avoided / precision of similarity hits")
        print(f"  Metis (exact + semantic at {a.threshold}, verified from {a.verify}): "
              f"{mine['avoided']:.1%} / "
              f"{mine['precision']:.3f} (semantic hits only)")
        print(f"  GPTCache default (SearchDistanceEvaluation, 0.8 ~ cosine >= 0.6): "
              f"{g_default['avoided']:.1%} / {g_default['precision']:.3f}; get p50 "
              f"{g_default['get_ms_p50']:.2f} ms")
        print(f"  GPTCache at cosine >= {a.threshold}: {g_same['avoided']:.1%} / "
              f"{g_same['precision']:.3f}")

    runs: list[dict[str, float]] = []
    with FakeLLMServer(latency_ms=a.llm_latency_ms, tokens_per_s=0) as fake:
        for run in range(a.runs):
            runs.append(asyncio.run(live_run(work, run, seq, fake, a.concurrency, a.threshold,
                                         a.verify)))
            r = runs[-1]
            print(f"live run {run + 1}: LLM calls avoided {r['llm_avoided']:.1%}, exact "
                  f"{r['ratio_exact']:.1%}, semantic {r['ratio_semantic']:.1%} (precision "
                  f"{r['semantic_precision']:.3f}), errors {r['errors']:.0f}", flush=True)
        redis_runs = [asyncio.run(redis_run(work, run, fake, a.redis_url))
                      for run in range(a.runs)]

    def m(key: str, rows: list[dict[str, float]] = runs) -> float:
        return harness.median([r[key] for r in rows])

    print(f"\nlive HTTP, LLM latency {a.llm_latency_ms:.0f} ms, {a.concurrency} clients, "
          f"threshold {a.threshold}, median of {a.runs} runs")
    print("hit ratio per level: " + ", ".join(
        f"{k} {m('ratio_' + k):.1%}" for k in ("exact", "semantic", "retrieval", "llm", "miss")))
    print(f"LLM calls avoided: {m('llm_avoided'):.1%} (target >= 70%); semantic precision "
          f"{m('semantic_precision'):.3f} over {m('semantic_hits'):.0f} hits (target >= 0.98); "
          f"errors {m('errors'):.0f}")
    print(f"client latency: hits p50 {m('hit_p50'):.1f} ms, p95 {m('hit_p95'):.1f} ms; "
          f"misses p50 {m('miss_p50'):.0f} ms, p95 {m('miss_p95'):.0f} ms")
    print(f"server time: exact hit p50 {m('exact_server_p50'):.2f} ms, p95 "
          f"{m('exact_server_p95'):.2f} ms (target <= 1 ms in-process); miss p50 "
          f"{m('miss_server_p50'):.0f} ms: {m('miss_server_p50') / m('exact_server_p50'):.0f}x "
          "(target >= 100x)")
    print(f"with Redis (server B hits what server A cached): {m('redis_hits', redis_runs):.0%} "
          f"exact hits, server p50 {m('redis_server_p50', redis_runs):.2f} ms, p95 "
          f"{m('redis_server_p95', redis_runs):.2f} ms (target <= 2 ms); then from B's memory "
          f"tier p50 {m('memory_server_p50', redis_runs):.2f} ms")


if __name__ == "__main__":
    main()
