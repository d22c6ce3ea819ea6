"""The multi-level cache: the semantic decision on labelled pairs, the sibling-question
workload, and the repeated workload through the real HTTP API (median of --runs).

    python benchmarks/bench_cache.py [--requests 500] [--runs 3] [--concurrency 8]

1. Labelled pairs (benchmarks/data/semantic_pairs.jsonl, semantic_pairs.py): the calibration
   and the test split separately: error (share of lookups served another question's answer),
   precision and recall at each METIS_CACHE__SEMANTIC_MAX_ERROR, the misses by pattern, a plain
   cosine threshold at the same recall, what the decision adds to a lookup, and GPTCache 0.1.x
   on the same pairs in the same run (its default, cosine 0.95, and the cosine at Metis's recall).
2. Sibling workload: 150+ passages, 2-5 different questions each (and a paraphrase of half),
   asked one after another through `ChatService.answer`: false semantic hits per second question.
3. Replay of the Zipf workload of benchmarks/cache_workload.py through the exact + semantic
   levels (same embedder), and GPTCache on the same sequence.
4. Live: a real `metis serve` answering with an OpenAI-compatible LLM (our fake server, 1 s
   latency), a fresh data dir per run; the workload sent by --concurrency clients. Reports the
   hit ratio per level, LLM calls avoided (counted by the LLM server), semantic precision and
   p50/p95 latency of hits and misses.
5. Two servers on one database and a private Redis: server B answers what server A cached,
   exact hits and semantic hits (other wordings), from Redis rather than its memory tier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_workload as wl
import harness
import semantic_eval as ev
import semantic_pairs
from metis_rag.cache.equivalence import Equivalence, Model
from metis_rag.cache.levels import normalize_question
from metis_rag.cache.semantic import SemanticIndex
from metis_rag.config import CacheSettings, EmbedSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.embed import build_embedder

LLM_PATHS = ("/v1/chat/completions", "/api/chat")


async def embed(texts: list[str]) -> dict[str, np.ndarray]:
    embedder = build_embedder(EmbedSettings(), harness.MODEL_HOME)
    await embedder.start()
    vectors = await embedder.embed(texts)
    await embedder.close()
    return dict(zip(texts, vectors, strict=True))


async def simulate(seq: list[str], vec: dict[str, np.ndarray],
                   max_error: float) -> dict[str, float]:
    """Metis's exact then semantic lookup, in request order, with the real `SemanticIndex`."""
    eq = Equivalence(Model.load(), max_error)
    index = SemanticIndex(next(iter(vec.values())).shape[0], max_entries=100_000, equivalence=eq)
    seen: dict[str, str] = {}
    exact = semantic = correct = 0
    part = ("bench", "1", "1", "s")
    for q in seq:
        key = normalize_question(q)
        if key in seen:
            exact += 1
            continue
        found = await index.match(part, vec[q], q)
        if found is not None:
            semantic += 1
            correct += wl.TOPIC_OF[found.candidate.question] == wl.TOPIC_OF[q]
            continue
        seen[key] = q
        await index.add(part, vec[q], key, q)
    n = len(seq)
    return {"exact": exact / n, "semantic": semantic / n, "avoided": (exact + semantic) / n,
            "precision": correct / semantic if semantic else 1.0}


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
                        "embed_ms": body.get("timings_ms", {}).get("embed") or 0.0,
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
                   concurrency: int, max_error: float) -> dict[str, float]:
    data_dir = harness.new_data_dir(work, f"live{run}")
    handbook = wl.write_handbook(work / "handbook")
    env = {"METIS_LLM__PROVIDER": "openai", "METIS_LLM__URL": fake.url,
           "METIS_LLM__MODEL": "fake", "METIS_CACHE__SEMANTIC_MAX_ERROR": str(max_error)}
    with harness.metis_server(data_dir, env) as url:
        harness.upload_corpus(url, handbook[0].parent, "hb")
        before = llm_calls(fake)
        rows = await send(url, seq, concurrency)
        return summarize(rows, llm_calls(fake) - before)


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a free port: the shared one is never flushed."""
    port = harness.free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


async def redis_run(work: Path, run: int, fake: FakeLLMServer,
                    max_error: float) -> dict[str, float]:
    """Server A answers each topic's first wording; server B (same database, its own memory
    tier) then asks them again (exact hits from Redis) and in the other wordings (semantic
    hits, the questions read from Redis's list), under a bound at which the level serves."""
    data_a = harness.new_data_dir(work, f"redis-a{run}")
    data_b = harness.new_data_dir(work, f"redis-b{run}")
    first = [t.questions[0] for t in wl.TOPICS]
    others = [q for t in wl.TOPICS for q in t.questions[1:]]
    with private_redis() as redis_url:
        env = {"METIS_LLM__PROVIDER": "openai", "METIS_LLM__URL": fake.url,
               "METIS_LLM__MODEL": "fake", "METIS_CACHE__BACKEND": "redis",
               "METIS_CACHE__REDIS_URL": redis_url,
               "METIS_CACHE__SEMANTIC_MAX_ERROR": str(max_error),
               "METIS_DATABASE_URL": f"sqlite+aiosqlite:///{data_a / 'metis.db'}"}
        with harness.metis_server(data_a, env) as url_a:
            harness.upload_corpus(url_a, wl.write_handbook(work / "handbook")[0].parent, "hb")
            await send(url_a, first, 8)
            with harness.metis_server(data_b, env) as url_b:
                from_redis = await send(url_b, first, 1)
                from_memory = await send(url_b, first, 1)
                reworded = await send(url_b, others, 1)
        parts = await hit_breakdown(redis_url, [r["q"] for r in reworded
                                                if r["cache"].get("level") == "semantic"],
                                    max_error)
    ok = [r for r in from_redis if r["cache"].get("level") == "exact"]
    if not ok:
        print(f"  run {run}: no exact hit from Redis on B (Redis late or its breaker open?)")
    sem = [r for r in reworded if r["cache"].get("level") == "semantic"]
    good = sum(wl.TOPIC_OF[r["q"]] == wl.TOPIC_OF.get(r["cache"].get("original_question"))
               for r in sem)
    return {"redis_hits": len(ok) / len(first),
            "redis_server_p50": harness.percentile([r["server_ms"] for r in ok], 0.50),
            "redis_server_p95": harness.percentile([r["server_ms"] for r in ok], 0.95),
            "memory_server_p50": harness.percentile([r["server_ms"] for r in from_memory], 0.50),
            "semantic_b_hits": len(sem) / len(others),
            "semantic_b_precision": good / len(sem) if sem else 1.0,
            "semantic_b_server_p50": harness.percentile([r["server_ms"] for r in sem], 0.50),
            "semantic_b_server_p95": harness.percentile([r["server_ms"] for r in sem], 0.95),
            # the same without embedding the new question (the model, not the cache)
            "semantic_b_lookup_p95": harness.percentile(
                [r["server_ms"] - r["embed_ms"] for r in sem], 0.95),
            "semantic_b_embed_p50": harness.percentile([r["embed_ms"] for r in sem], 0.50),
            "semantic_b_embed_p95": harness.percentile([r["embed_ms"] for r in sem], 0.95),
            **{f"part_{k}_{q}": harness.percentile(v, p) for k, v in parts.items()
               for q, p in (("p50", 0.50), ("p95", 0.95))}}


async def hit_breakdown(redis_url: str, questions: list[str],
                        max_error: float) -> dict[str, list[float]]:
    """The steps of a second server's semantic hit, one at a time, in this process, on the
    Redis the servers used (ms per question): what `ChatService` does for one, in order."""
    from redis.asyncio import Redis

    from metis_rag.cache.codec import Codec
    from metis_rag.cache.mirror import decode_record
    from metis_rag.cache.redis import RedisBackend

    prefix = CacheSettings().redis_key_prefix
    raw = Redis.from_url(redis_url)
    list_keys = [k.decode()[len(prefix):] async for k in raw.scan_iter(f"{prefix}semantic:*")]
    await raw.aclose()
    out: dict[str, list[float]] = {k: [] for k in (
        "exact_miss", "embed_cache_get", "embed_model", "embed_cache_set", "list_read",
        "list_decode", "decision", "answer_get", "answer_decode", "cold_list_read")}
    if not list_keys or not questions:
        print(f"  no breakdown: {len(list_keys)} semantic lists, {len(questions)} hits")
        return out
    backend = RedisBackend(redis_url, namespace=prefix, timeout_s=1.0)
    embedder = build_embedder(EmbedSettings(), harness.MODEL_HOME)
    await embedder.start()
    await backend.start()
    codec = Codec()
    try:
        lists = {k: await backend.read_list(k, 0) or (0, []) for k in list_keys}
        log_key = max(lists, key=lambda k: lists[k][0])  # the partition the questions asked
        length, items = lists[log_key]
        mirror = SemanticIndex(embedder.dim, 100_000, Equivalence(Model.load(), max_error))
        part = ("bench",)
        for item in items:
            k, q, v = decode_record(item)
            await mirror.add(part, v, k, q)

        async def timed(name: str, step: Any) -> Any:
            t = time.perf_counter()
            value = await step
            out[name].append((time.perf_counter() - t) * 1000)
            return value

        for q in questions:
            await timed("exact_miss", backend.get(f"exact:missing:{q}"))
            await timed("embed_cache_get", backend.get_many([f"embedding:missing:{q}"]))
            vector = (await timed("embed_model", embedder.embed([q])))[0]
            await timed("embed_cache_set", backend.set_many(
                {f"bench-breakdown:{q}": codec.encode(vector)}, 60))
            # A warm mirror reads back one item (the overlap) and whatever is new.
            found = await timed("list_read", backend.read_list(log_key, length - 1))
            t = time.perf_counter()
            for item in (found or (0, []))[1]:
                decode_record(item)
            out["list_decode"].append((time.perf_counter() - t) * 1000)
            match = await timed("decision", mirror.match(part, vector, q))
            if match is None:
                continue
            entry = await timed("answer_get", backend.get("exact:" + match.candidate.key))
            t = time.perf_counter()
            if entry is not None:
                codec.decode(entry)
            out["answer_decode"].append((time.perf_counter() - t) * 1000)
        for _ in range(5):  # a server's first lookup in a partition reads the whole list
            await timed("cold_list_read", backend.read_list(log_key, 0))
        await backend.clear("bench-breakdown:")
    finally:
        await backend.close()
        await embedder.close()
    return out


def pairs_report(vec: dict[str, np.ndarray], work: Path, gpt: bool,
                 max_error: float, serving: float) -> dict[str, float]:
    model = Model.load()
    out: dict[str, float] = {}
    for split in ("calibration", "test"):
        pairs = semantic_pairs.load_pairs(split)
        print(f"\nlabelled pairs, {split} split: {len(pairs)} lookups, "
              f"{sum(p.same for p in pairs)} same-question")
        print(f"{'max_error':>9} {'threshold':>9} {'error':>7} {'precision':>9} {'recall':>7}"
              f" {'hits':>5}   cosine at that recall: precision")
        for e in sorted({*ev.MAX_ERRORS, max_error, serving}):
            eq = Equivalence(model, e)
            r = ev.summary(pairs, ev.judge_pairs(pairs, vec, eq))
            cos_t, cos_p = ev.cosine_at_recall(pairs, vec, r["recall"])
            print(f"{e:9.3f} {eq.threshold:9.4f} {r['error']:7.4f} {r['precision']:9.3f} "
                  f"{r['recall']:7.3f} {r['hits']:5d}   cos >= {cos_t:.3f}: {cos_p:.3f}")
            if e in (max_error, serving):
                tag = split if e == max_error else f"{split}_serving"
                out.update({f"{tag}_{k}": v for k, v in r.items()})
                out[f"{tag}_cosine_precision"] = cos_p
                out[f"{tag}_cosine_threshold"] = cos_t
        eq = Equivalence(model, max_error)
        accepted = ev.judge_pairs(pairs, vec, eq)
        print(f"served at max_error {max_error} by pattern (same-question pairs are "
              f"'paraphrase'): {ev.by_pattern(pairs, accepted)}")
        if split == "test":
            # At a bound that serves: at one that serves nothing the score is never computed.
            p50, p95 = ev.decision_latency_us(pairs, vec, Equivalence(model, serving))
            out["decision_us_p50"], out["decision_us_p95"] = p50, p95
            print(f"the decision per lookup (analyse + judge 4 candidates): p50 {p50:.0f} us, "
                  f"p95 {p95:.0f} us (target <= 1000 us)")
            if gpt:
                at = out["test_serving_cosine_threshold"]
                print(f"Metis at max_error {serving}: precision "
                      f"{out['test_serving_precision']:.3f}, recall "
                      f"{out['test_serving_recall']:.3f}")
                for name, cos in (("default (0.8 ~ cosine 0.6)", None), ("cosine 0.95", 0.95),
                                  (f"cosine {at:.3f} (Metis's recall at max_error {serving})",
                                   at)):
                    g = ev.gptcache_pairs(pairs, vec, work, cos)
                    print(f"GPTCache {name}: error {g['error']:.4f}, precision "
                          f"{g['precision']:.3f}, recall {g['recall']:.3f}")
                    out[f"gptcache_{cos}_precision"] = g["precision"]
                    out[f"gptcache_{cos}_recall"] = g["recall"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--llm-latency-ms", type=float, default=1000)
    p.add_argument("--max-error", type=float, default=CacheSettings().semantic_max_error)
    p.add_argument("--serving-max-error", type=float, default=0.2,
                   help="a bound at which the shipped calibration serves: GPTCache is compared "
                   "at its recall, and the second server's semantic hits are measured under it")
    p.add_argument("--no-gptcache", action="store_true")
    p.add_argument("--no-live", action="store_true", help="only the offline parts (1-3)")
    p.add_argument("--two-servers-only", action="store_true", help="only part 5")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="metis-bench-cache-"))
    harness.prepared_models()
    print(f"machine: {harness.machine()}")
    if a.two_servers_only:
        with FakeLLMServer(latency_ms=a.llm_latency_ms, tokens_per_s=0) as fake:
            two_servers_report(a, [asyncio.run(redis_run(work, run, fake, a.serving_max_error))
                                   for run in range(a.runs)])
        return
    all_pairs = semantic_pairs.load_pairs()
    vec = asyncio.run(embed(sorted({*wl.TOPIC_OF, *(q for r in all_pairs for q in (r.a, r.b))})))
    pairs_report(vec, work, not a.no_gptcache, a.max_error, a.serving_max_error)

    passages = semantic_pairs.load_passages()
    for e in sorted({a.max_error, a.serving_max_error}):
        sib = asyncio.run(ev.sibling_run(work, passages, e))
        print(f"\nsibling workload ({sib['passages']} passages, real answer path, max_error "
              f"{e}): false semantic hits {sib['false_second']} of "
              f"{sib['second_questions']} second questions = {sib['false_rate']:.2%} (target <= "
              f"1%); other false hits {sib['false_other']}; paraphrases served "
              f"{sib['paraphrase_hits']}/{sib['paraphrases']}; rejected {sib['rejected']}")

    seq = wl.zipf_workload(a.requests)
    print(f"\nworkload: {len(seq)} requests over {len(wl.TOPICS)} topics x 4 wordings, Zipf "
          f"s=1.1, 40% reworded; {len(set(seq))} distinct questions")
    print(f"{'max_error':>9} {'semantic hits':>13} {'precision':>9} {'avoided':>8}")
    for e in sorted({*ev.MAX_ERRORS, a.max_error}):
        s = asyncio.run(simulate(seq, vec, e))
        print(f"{e:9.3f} {s['semantic']:13.1%} {s['precision']:9.3f} {s['avoided']:8.1%}")
    mine = asyncio.run(simulate(seq, vec, a.max_error))
    if not a.no_gptcache:
        g_default = gptcache_run(seq, vec, work, None)
        g_strict = gptcache_run(seq, vec, work, 0.95)
        print("same sequence, same embeddings: calls avoided / precision of similarity hits")
        print(f"  Metis (exact + semantic, max_error {a.max_error}): {mine['avoided']:.1%} / "
              f"{mine['precision']:.3f} (semantic hits only)")
        print(f"  GPTCache default (SearchDistanceEvaluation, 0.8 ~ cosine >= 0.6): "
              f"{g_default['avoided']:.1%} / {g_default['precision']:.3f}; get p50 "
              f"{g_default['get_ms_p50']:.2f} ms")
        print(f"  GPTCache at cosine >= 0.95: {g_strict['avoided']:.1%} / "
              f"{g_strict['precision']:.3f}")
    if a.no_live:
        return

    runs: list[dict[str, float]] = []
    with FakeLLMServer(latency_ms=a.llm_latency_ms, tokens_per_s=0) as fake:
        for run in range(a.runs):
            runs.append(asyncio.run(live_run(work, run, seq, fake, a.concurrency, a.max_error)))
            r = runs[-1]
            print(f"live run {run + 1}: LLM calls avoided {r['llm_avoided']:.1%}, exact "
                  f"{r['ratio_exact']:.1%}, semantic {r['ratio_semantic']:.1%} (precision "
                  f"{r['semantic_precision']:.3f}), errors {r['errors']:.0f}", flush=True)
        redis_runs = [asyncio.run(redis_run(work, run, fake, a.serving_max_error))
                      for run in range(a.runs)]

    def m(key: str, rows: list[dict[str, float]] = runs) -> float:
        return harness.median([r[key] for r in rows])

    print(f"\nlive HTTP, LLM latency {a.llm_latency_ms:.0f} ms, {a.concurrency} clients, "
          f"max_error {a.max_error}, median of {a.runs} runs")
    print("hit ratio per level: " + ", ".join(
        f"{k} {m('ratio_' + k):.1%}" for k in ("exact", "semantic", "retrieval", "llm", "miss")))
    print(f"LLM calls avoided: {m('llm_avoided'):.1%} (target >= 70%); semantic precision "
          f"{m('semantic_precision'):.3f} over {m('semantic_hits'):.0f} hits; "
          f"errors {m('errors'):.0f}")
    print(f"client latency: hits p50 {m('hit_p50'):.1f} ms, p95 {m('hit_p95'):.1f} ms; "
          f"misses p50 {m('miss_p50'):.0f} ms, p95 {m('miss_p95'):.0f} ms")
    print(f"server time: exact hit p50 {m('exact_server_p50'):.2f} ms, p95 "
          f"{m('exact_server_p95'):.2f} ms; miss p50 {m('miss_server_p50'):.0f} ms")
    two_servers_report(a, redis_runs)


def two_servers_report(a: argparse.Namespace, redis_runs: list[dict[str, float]]) -> None:
    def m(key: str) -> float:
        return harness.median([r[key] for r in redis_runs])

    print(f"two servers, Redis (B hits what A cached), median of {len(redis_runs)} runs: "
          f"{m('redis_hits'):.0%} exact hits, server p50 {m('redis_server_p50'):.2f} ms, p95 "
          f"{m('redis_server_p95'):.2f} ms; then from B's memory tier p50 "
          f"{m('memory_server_p50'):.2f} ms")
    print(f"  semantic hits on B (other wordings, max_error {a.serving_max_error}): "
          f"{m('semantic_b_hits'):.0%} of them, precision {m('semantic_b_precision'):.3f}, "
          f"server p50 {m('semantic_b_server_p50'):.2f} ms, p95 "
          f"{m('semantic_b_server_p95'):.2f} ms (target <= 5 ms); p95 without embedding the "
          f"question {m('semantic_b_lookup_p95'):.2f} ms; the embedding (server's timing) p50 "
          f"{m('semantic_b_embed_p50'):.2f} ms, p95 {m('semantic_b_embed_p95'):.2f} ms")
    print("  its steps replayed one at a time in the benchmark's process on the same Redis, "
          "ms p50 / p95:")
    for step in ("exact_miss", "embed_cache_get", "embed_model", "embed_cache_set", "list_read",
                 "list_decode", "decision", "answer_get", "answer_decode", "cold_list_read"):
        print(f"    {step:16} {m(f'part_{step}_p50'):7.3f} / {m(f'part_{step}_p95'):7.3f}")


if __name__ == "__main__":
    main()
