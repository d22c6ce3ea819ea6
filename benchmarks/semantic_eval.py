"""The semantic cache's decision measured on the labelled pairs and on the sibling workload.

Used by `bench_cache.py`. A pair (a, b) is one lookup: `a` is cached, `b` is asked. Precision is the
share of semantic hits that were right, error is 1 - precision (what
METIS_CACHE__SEMANTIC_MAX_ERROR bounds); recall the share of same-question pairs served.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import harness
import semantic_pairs
from metis_rag.cache.equivalence import Equivalence, analyse

MAX_ERRORS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)


def judge_pairs(pairs: list[semantic_pairs.Pair], vec: dict[str, np.ndarray],
                eq: Equivalence) -> np.ndarray:
    cached = {q: analyse(q) for q in {p.a for p in pairs}}
    return np.array([eq.judge(analyse(p.b), cached[p.a], float(vec[p.a] @ vec[p.b])).same
                     for p in pairs])


def summary(pairs: list[semantic_pairs.Pair], accepted: np.ndarray) -> dict[str, float]:
    same = np.array([p.same for p in pairs])
    hits, right = int(accepted.sum()), int((accepted & same).sum())
    return {"lookups": len(pairs), "hits": hits, "wrong": hits - right,
            "error": (hits - right) / hits if hits else 0.0,
            "precision": right / hits if hits else 1.0,
            "recall": right / int(same.sum())}


def by_pattern(pairs: list[semantic_pairs.Pair], accepted: np.ndarray) -> dict[str, str]:
    total = Counter(p.pattern for p in pairs)
    served = Counter(p.pattern for p, a in zip(pairs, accepted, strict=True) if a)
    return {k: f"{served[k]}/{total[k]}" for k in sorted(total)}


def cosine_at_recall(pairs: list[semantic_pairs.Pair], vec: dict[str, np.ndarray],
                     recall: float) -> tuple[float, float]:
    """(cosine threshold, precision) of a plain cosine threshold at `recall` (the curve any
    similarity-threshold cache, GPTCache's default evaluation included, moves along)."""
    cos = np.array([float(vec[p.a] @ vec[p.b]) for p in pairs])
    same = np.array([p.same for p in pairs])
    order = np.argsort(-cos)
    tp = np.cumsum(same[order])
    k = min(int(np.searchsorted(tp, recall * same.sum())), len(order) - 1)
    return float(cos[order[k]]), float(tp[k] / (k + 1))


def decision_latency_us(pairs: list[semantic_pairs.Pair], vec: dict[str, np.ndarray],
                        eq: Equivalence, candidates: int = 4) -> tuple[float, float]:
    """p50/p95 of what the decision adds to a lookup: analysing the new question and judging
    `candidates` cached ones (analysed when they were cached, as the index does)."""
    cached = {q: analyse(q) for q in {p.a for p in pairs}}
    times = []
    for p in pairs:
        t = time.perf_counter()
        text = analyse(p.b)
        for _ in range(candidates):
            eq.judge(text, cached[p.a], float(vec[p.a] @ vec[p.b]))
        times.append((time.perf_counter() - t) * 1e6)
    return harness.percentile(times, 0.50), harness.percentile(times, 0.95)


def gptcache_pairs(pairs: list[semantic_pairs.Pair], vec: dict[str, np.ndarray], work: Path,
                   cosine: float | None) -> dict[str, float]:
    """GPTCache 0.1.x on the same lookups: a cache holding only `a`, then `get(b)`; its default
    similarity evaluation (SearchDistanceEvaluation) at its default threshold (None) or at the
    one equivalent to `cosine`."""
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation import SearchDistanceEvaluation

    # SearchDistanceEvaluation scores 4 - squared L2 (= 2 + 2 cos on unit vectors) and a hit
    # needs score >= 4 * similarity_threshold: cos >= t  <=>  threshold = (2 + 2t) / 4.
    config = Config() if cosine is None else Config(similarity_threshold=(2 + 2 * cosine) / 4)
    by_cached: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_cached.setdefault(p.a, []).append(i)
    accepted = np.zeros(len(pairs), bool)
    for a, idx in by_cached.items():
        d = Path(tempfile.mkdtemp(dir=work, prefix="gptcache-"))
        cache = Cache()
        cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=lambda text, **_: vec[text],
            data_manager=get_data_manager(
                CacheBase("sqlite", sql_url=f"sqlite:///{d}/gptcache.db"),
                VectorBase("faiss", dimension=len(vec[a]), index_path=str(d / "faiss.index")),
                max_size=100),
            similarity_evaluation=SearchDistanceEvaluation(),
            config=config,
        )
        put(a, "answer of a", cache_obj=cache)
        for i in idx:
            accepted[i] = get(pairs[i].b, cache_obj=cache) is not None
    return summary(pairs, accepted)


async def sibling_run(work: Path, passages: list[semantic_pairs.Passage],
                      max_error: float) -> dict[str, Any]:
    """Every passage ingested (one collection per corpus), then its questions asked one after
    another through `ChatService.answer` (extractive answers, the default disk cache)."""
    from metis_rag.config import CacheSettings, Settings
    from metis_rag.ingest.pipeline import Upload
    from metis_rag.schemas import ChatQuery
    from metis_rag.services import open_services

    data_dir = harness.new_data_dir(work, f"siblings-{max_error}")
    settings = Settings(data_dir=data_dir, cache=CacheSettings(semantic_max_error=max_error))
    intent: dict[str, tuple[str, str]] = {}
    asked = semantic_pairs.sibling_workload(passages)
    second = false_second = false_other = paraphrases = para_hits = 0
    hit_ms: list[float] = []
    async with open_services(settings) as services:
        for corpus in sorted({p.corpus for p, _ in asked}):
            uploads = [Upload(f"{p.id}.txt", f"{p.text}\n\n(source: {p.source})\n".encode())
                       for p, _ in asked if p.corpus == corpus]
            await services.ingestor.ingest(uploads, corpus)
        for p, questions in asked:
            seen: set[str] = set()
            for letter, q in questions:
                answer = await services.chat.answer(ChatQuery(message=q, collection=p.corpus))
                cache = answer.cache
                is_paraphrase = letter in seen
                if cache.level == "semantic":
                    hit_ms.append(answer.timings_ms.total)
                    right = intent.get(cache.original_question or "") == (p.id, letter)
                    if is_paraphrase:
                        para_hits += right
                    if not right:
                        if seen and not is_paraphrase:
                            false_second += 1
                        else:
                            false_other += 1
                second += bool(seen) and not is_paraphrase
                paraphrases += is_paraphrase
                intent.setdefault(q, (p.id, letter))
                seen.add(letter)
        stats = (await services.caches.stats())["levels"]["semantic"]
    return {"passages": len(asked), "second_questions": second, "false_second": false_second,
            "false_rate": false_second / second, "false_other": false_other,
            "paraphrases": paraphrases, "paraphrase_hits": para_hits,
            "hit_server_p50": harness.percentile(hit_ms, 0.5) if hit_ms else float("nan"),
            "rejected": stats["rejected"]}
