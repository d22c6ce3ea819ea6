"""Retrieval quality on three kinds of collection: Metis's modes and fusions, LlamaIndex, bm25s.

    apt-get install python3-doc          # the sources (see retrieval_data.py)
    pip install -e '.[peers]'            # LlamaIndex and bm25s
    python benchmarks/bench_retrieval.py [--split test|calibration|all] [--fusions]

Collections from retrieval_data.py, queries with graded labels (2 = answers it, 1 = related)
from retrieval_queries/<name>.json: questions, paraphrases, keyword queries and entity
lookups, plus 20 known items per collection (10-word spans copied from random units, drawn
with a fixed seed); half of them a calibration split, half a held-out test split (never
tuned on).
Every system ranks chunks; a unit (page, section, FAQ entry) counts at its best chunk, and
nDCG@10 (linear gains), recall@5/10 and MRR@10 are over units. Embeddings are cached under
benchmarks/.cache/retrieval. `--fusions` also scores the fusion options on the split.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import retrieval_data as data
from metis_rag.config import CacheSettings, EmbedSettings, RetrievalSettings, Settings
from metis_rag.rag import fusion
from metis_rag.rag.retriever import Candidates, rank_candidates

QUERIES = Path(__file__).resolve().parent / "retrieval_queries"
DEPTH = 40  # chunks each system returns; enough for 10 distinct units


def load_queries(name: str, split: str, units: list[dict]) -> list[dict]:
    qs = json.loads((QUERIES / f"{name}.json").read_text())["queries"] + known_items(units)
    return [q for q in qs if split == "all" or q["split"] == split]


def known_items(units: list[dict], n: int = 20, words: int = 10) -> list[dict]:
    """Spans of `words` words copied from random units (a user pasting a half-remembered line):
    the lexical extreme, where full text shines. Every unit holding the span is relevant."""
    rng = random.Random(7)
    out = []
    for unit in rng.sample(units, n):
        text = unit["text"].split()
        start = rng.randrange(0, max(1, len(text) - words))
        span = " ".join(text[start : start + words])
        rel = {u["id"]: 2 for u in units if span in " ".join(u["text"].split())}
        out.append({"id": f"span-{len(out) + 1}", "kind": "known item", "text": span,
                    "split": "calibration" if len(out) % 2 == 0 else "test", "relevant": rel})
    return out


def ndcg10(units: list[str], rel: dict[str, int]) -> float:
    dcg = sum(rel.get(u, 0) / math.log2(i + 2) for i, u in enumerate(units[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def metrics(units: list[str], rel: dict[str, int]) -> dict[str, float]:
    found = [i for i, u in enumerate(units[:10]) if rel.get(u, 0) > 0]
    n = len(rel)
    return {"nDCG@10": ndcg10(units, rel),
            "R@5": sum(rel.get(u, 0) > 0 for u in units[:5]) / n,
            "R@10": sum(rel.get(u, 0) > 0 for u in units[:10]) / n,
            "MRR@10": 1 / (found[0] + 1) if found else 0.0}


def mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def distinct(units: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(units))


def chunk_units(units: list[dict]) -> tuple[list[str], list[int]]:
    """Metis's chunker (128/24 tokens) over every unit: chunk texts and their unit index."""
    from metis_rag.embed.packaged import count_tokens
    from metis_rag.ingest.chunker import Chunker
    from metis_rag.ingest.parsers import ParsedDocument, Section

    chunker = Chunker(count_tokens, 128, 24)
    texts, owner = [], []
    for n, u in enumerate(units):
        for c in chunker.chunk(ParsedDocument(u["title"], "text/plain",
                                              [Section(u["text"], None, None)])):
            texts.append(c.text)
            owner.append(n)
    return texts, owner


def cached_vectors(tag: str, texts: list[str], embed: Callable[[list[str]], np.ndarray]
                   ) -> np.ndarray:
    key = hashlib.sha256("\x00".join([tag, *texts]).encode()).hexdigest()[:16]
    path = data.CACHE / f"{tag}-{key}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, embed(texts))
    return np.load(path)


EMBED = EmbedSettings()  # --embed-backend / --embed-model-path replace it


def metis_embed(texts: list[str]) -> np.ndarray:
    from metis_rag.embed import build_embedder

    async def run() -> np.ndarray:
        embedder = build_embedder(EMBED, harness.MODEL_HOME)
        await embedder.start()
        try:
            return await embedder.embed(texts)
        finally:
            await embedder.close()
    return asyncio.run(run())


# --- the fusion options measured on the calibration split ----------------------------------

Fuse = Callable[[Candidates, str], dict[int, float]]


def fusions() -> dict[str, Fuse]:
    """Every option measured: rank fusions, score fusions, and term evidence over the cosine."""
    def rrf(k: int, w: float) -> Fuse:
        return lambda c, q: fusion.rrf(
            [c.dense, sorted(c.lexical, key=c.lexical.__getitem__, reverse=True)], k, [w, 1 - w])

    def convex(w: float, how: fusion.Normalisation) -> Fuse:
        return lambda c, q: fusion.convex(c.similarity, c.lexical, w, how)

    options: dict[str, Fuse] = {
        "dense only": lambda c, q: {i: c.similarity[i] for i in c.dense},
        "full-text only": lambda c, q: dict(c.lexical),
        "rrf k=60 (old default)": rrf(60, 0.5),
    }
    for w in (0.6, 0.7, 0.8):
        options[f"weighted rrf k=60 w={w}"] = rrf(60, w)
    for how, w in itertools.product(("minmax", "zscore", "dbsf"), (0.5, 0.6, 0.7, 0.8, 0.9)):
        options[f"convex {how} w={w}"] = convex(w, how)  # type: ignore[arg-type]
    return options | term_fusions()


def term_fusions() -> dict[str, Fuse]:
    """Query-word evidence added to convex fusion, to a query-dependent mix, or to the cosine."""
    def convex_terms(w: float, cov: float, name: float) -> Fuse:
        return lambda c, q: fusion.terms(q, fusion.convex(c.similarity, c.lexical, w), c.rows,
                                         cov, name)

    def adaptive(a: float, cov: float) -> Fuse:
        def fuse(c: Candidates, q: str) -> dict[int, float]:
            # The full-text share grows with how far its best hit stands out.
            w = 0.9 - a * fusion.lexical_confidence(c.lexical)
            return fusion.terms(q, fusion.convex(c.similarity, c.lexical, w), c.rows, cov, 0.0)
        return fuse

    def cosine_terms(cov: float, name: float, phrase: float = 0.0) -> Fuse:
        return lambda c, q: fusion.terms(q, c.similarity, c.rows, cov, name, phrase)

    options: dict[str, Fuse] = {}
    for w, cov, name in itertools.product((0.7, 0.8, 0.9, 1.0), (0.0, 0.03, 0.1, 0.2),
                                          (0.0, 0.05, 0.2)):
        options[f"convex w={w} + terms {cov}/{name}"] = convex_terms(w, cov, name)
    for a, cov in itertools.product((0.3, 0.5, 0.7), (0.0, 0.1, 0.2)):
        options[f"adaptive a={a} + terms {cov}"] = adaptive(a, cov)
    for cov, name in itertools.product((0.02, 0.05, 0.1, 0.2), (0.0, 0.05, 0.1)):
        options[f"cosine + terms {cov}/{name}"] = cosine_terms(cov, name)
    for cov, phrase in itertools.product((0.05, 0.1), (0.05, 0.1, 0.2, 0.3, 0.5)):
        options[f"cosine + terms {cov}/0.05 + phrase {phrase}"] = cosine_terms(cov, 0.05, phrase)
    return options


def ranked_units(scores: dict[int, float], c: Candidates, unit_of: dict[int, str]) -> list[str]:
    """The distinct units of the first DEPTH chunks, ranked as the retriever ranks them."""
    order = sorted(scores, key=lambda i: (scores[i], c.similarity.get(i, 0.0)), reverse=True)
    return distinct(unit_of[i] for i in order[:DEPTH])


# --- peers --------------------------------------------------------------------------------

def bm25s_rankings(texts: list[str], queries: list[str]) -> tuple[list[list[int]], float]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                    show_progress=False)
    t = time.perf_counter()
    docs, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                 k=DEPTH, show_progress=False)
    return [list(map(int, row)) for row in docs], (time.perf_counter() - t) * 1000 / len(queries)


def llamaindex_rankings(units: list[dict], queries: list[str]) -> tuple[list[list[str]], float]:
    """LlamaIndex's defaults (SentenceSplitter 1024/200, in-memory vector store), same model."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core import Settings as LISettings
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.schema import MetadataMode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from metis_rag.embed.packaged import packaged_model_dir

    LISettings.embed_model = model = HuggingFaceEmbedding(
        model_name=str(packaged_model_dir()), device="cpu")
    LISettings.llm = None
    docs = [Document(text=u["text"], id_=u["id"]) for u in units]
    nodes = SentenceSplitter().get_nodes_from_documents(docs)  # LlamaIndex's default splitter
    contents = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    vectors = cached_vectors("llamaindex", contents,
                             lambda t: np.array(model.get_text_embedding_batch(t)))
    for node, vec in zip(nodes, vectors, strict=True):
        node.embedding = vec.tolist()
    retriever = VectorStoreIndex(nodes).as_retriever(similarity_top_k=DEPTH)
    t = time.perf_counter()
    out = [distinct(h.node.ref_doc_id for h in retriever.retrieve(q)) for q in queries]
    return out, (time.perf_counter() - t) * 1000 / len(queries)


# --- Metis --------------------------------------------------------------------------------

async def metis_candidates(units: list[dict], texts: list[str], owner: list[int],
                           vectors: np.ndarray, qvecs: np.ndarray, queries: list[str]
                           ) -> tuple[list[Candidates], dict[int, str], float, float]:
    """Both legs of every query through Metis's own retriever over a fresh SQLite store."""
    from metis_rag.services import open_services
    from metis_rag.tenancy.principal import DEFAULT_TENANT

    work = Path(tempfile.mkdtemp(prefix="metis-bench-retrieval-"))
    settings = Settings(data_dir=harness.new_data_dir(work, "data"),
                        cache=CacheSettings(enabled=False),
                        retrieval=RetrievalSettings(candidates=DEPTH))
    await insert_units(settings, units, texts, owner, vectors)
    async with open_services(settings) as services:
        coll_id, _ = await services.lookup.get(DEFAULT_TENANT, "bench")
        found, dense_ms, hybrid_ms = [], [], []
        for q, v in zip(queries, qvecs, strict=True):
            t = time.perf_counter()
            await services.retriever.retrieve(coll_id, q, v, top_k=10, hybrid=False)
            dense_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await services.retriever.retrieve(coll_id, q, v, top_k=10, hybrid=True)
            hybrid_ms.append((time.perf_counter() - t) * 1000)
            found.append(await services.retriever.candidates(coll_id, q, v, DEPTH))
    unit_of = {i + 1: units[owner[i]]["id"] for i in range(len(texts))}  # chunk ids from 1
    return found, unit_of, harness.median(dense_ms), harness.median(hybrid_ms)


async def insert_units(settings: Settings, units: list[dict], texts: list[str],
                       owner: list[int], vectors: np.ndarray) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from metis_rag.store.db import create_engine, migrate
    from metis_rag.store.models import Chunk, Collection, Document

    engine = create_engine(settings)
    await migrate(engine)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(Collection), [{"id": 1, "name": "bench", "version": 1,
                                                 "created_at": now, "updated_at": now}])
        await conn.execute(insert(Document), [
            # A realistic file name: the page, or the file that holds the section.
            {"id": n + 1, "collection_id": 1, "filename": u["id"].split("#")[0], "folder": "",
             "content_hash": hashlib.sha256(u["id"].encode()).hexdigest(), "mime": "text/plain",
             "size_bytes": len(u["text"]), "title": u["title"], "tags": [], "status": "ready",
             "error": None, "chunk_count": owner.count(n), "created_at": now, "updated_at": now}
            for n, u in enumerate(units)])
        await conn.execute(insert(Chunk), [
            {"id": i + 1, "document_id": owner[i] + 1, "collection_id": 1, "position": i,
             "text": texts[i], "page": None, "section": None, "token_count": 0,
             "embedding": vectors[i].astype("<f4").tobytes()} for i in range(len(texts))])
    await engine.dispose()


def table(title: str, rows: dict[str, dict[str, float]], extra: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"  {'system':34} {'nDCG@10':>8} {'R@5':>6} {'R@10':>6} {'MRR@10':>7}  note")
    for name, m in rows.items():
        print(f"  {name:34} {m['nDCG@10']:8.3f} {m['R@5']:6.3f} {m['R@10']:6.3f} "
              f"{m['MRR@10']:7.3f}  {extra.get(name, '')}", flush=True)


def evaluate(name: str, a: argparse.Namespace, default: RetrievalSettings
             ) -> tuple[dict[str, list[dict[str, float]]], list[dict], dict[str, float]]:
    """Per-query metrics of every system on one collection, and the fusion options' nDCG@10."""
    units = data.load(name)
    queries = load_queries(name, a.split, units)
    texts, owner = chunk_units(units)
    tag = "metis" if EMBED == EmbedSettings() else f"{EMBED.backend}-{Path(EMBED.model_path).name}"
    t = time.perf_counter()
    vectors = cached_vectors(f"{name}-{tag}", texts, metis_embed)
    print(f"{name}: {len(texts)} chunks embedded or loaded in {time.perf_counter() - t:.1f} s",
          flush=True)
    qtexts = [q["text"] for q in queries]
    qvecs = cached_vectors(f"{name}-queries" + ("" if tag == "metis" else f"-{tag}"), qtexts,
                           metis_embed)
    found, unit_of, dense_ms, hybrid_ms = asyncio.run(
        metis_candidates(units, texts, owner, vectors, qvecs, qtexts))
    rels = [q["relevant"] for q in queries]
    options = fusions()
    chosen: dict[str, Fuse] = {
        "dense only": options["dense only"],
        "full-text only (FTS5 BM25)": options["full-text only"],
        "rrf k=60 (old default)": options["rrf k=60 (old default)"],
        "Metis default": lambda c, q: rank_candidates(c, q, default, True),
        # The default before table rows counted as exact evidence (same weights, pairs only).
        "Metis default, no keyed rows": lambda c, q: fusion.terms(
            q, c.similarity, c.rows, default.term_weight, default.name_weight,
            default.phrase_weight, keyed_rows=False),
    }

    def score(fuse: Fuse) -> list[dict[str, float]]:
        return [metrics(ranked_units(fuse(c, q), c, unit_of), r)
                for c, q, r in zip(found, qtexts, rels, strict=True)]

    per_system = {k: score(f) for k, f in chosen.items()}
    notes = {"dense only": f"retrieve {dense_ms:.1f} ms",
             "Metis default": f"retrieve {hybrid_ms:.1f} ms"}
    t = time.perf_counter()
    for c, q in zip(found, qtexts, strict=True):
        rank_candidates(c, q, default, True)
    notes["Metis default"] += f", fusion {(time.perf_counter() - t) * 1000 / len(found):.2f} ms"
    if not a.no_peers:
        ranks, ms = bm25s_rankings(texts, qtexts)
        per_system["bm25s"] = [metrics(distinct(units[owner[i]]["id"] for i in rk), r)
                               for rk, r in zip(ranks, rels, strict=True)]
        notes["bm25s"] = f"retrieve {ms:.1f} ms"
        li, ms = llamaindex_rankings(units, qtexts)
        per_system["LlamaIndex defaults"] = [metrics(u, r) for u, r in zip(li, rels, strict=True)]
        notes["LlamaIndex defaults"] = f"retrieve {ms:.1f} ms"
    table(f"{name}: {len(units)} units, {len(texts)} chunks, {len(queries)} queries",
          {k: mean(v) for k, v in per_system.items()}, notes)
    option_scores = {}
    if a.fusions:
        option_scores = {k: mean(score(f))["nDCG@10"] for k, f in options.items()}
    return per_system, queries, option_scores


def by_kind(per_system: dict[str, list[dict[str, float]]], queries: list[dict]) -> str:
    parts = []
    for kind in ("question", "paraphrase", "keywords", "entity", "known item"):
        idx = [i for i, q in enumerate(queries) if q["kind"] == kind]
        if idx:
            parts.append(f"{kind} ({len(idx)}): " + ", ".join(
                f"{k} {sum(v[i]['nDCG@10'] for i in idx) / len(idx):.3f}"
                for k, v in per_system.items()))
    return "  nDCG@10 by kind of query: " + "; ".join(parts)


def main(a: argparse.Namespace) -> None:
    print(f"{harness.machine()}; split: {a.split}")
    default = RetrievalSettings()
    summary: dict[str, dict[str, float]] = {}
    options: dict[str, list[float]] = {}
    for name in a.collections:
        per_system, queries, option_scores = evaluate(name, a, default)
        print(by_kind(per_system, queries))
        for k, v in per_system.items():
            summary.setdefault(k, {})[name] = mean(v)["nDCG@10"]
        for k, v in option_scores.items():
            options.setdefault(k, []).append(v)
    print("\nnDCG@10 per collection (" + ", ".join(a.collections) + "), and the mean")
    for k, per in summary.items():
        vals = " ".join(f"{per[n]:.3f}" for n in a.collections)
        print(f"  {k:34} {vals}  mean {sum(per.values()) / len(per):.3f}")
    best_leg = [max(summary["dense only"][n], summary["full-text only (FTS5 BM25)"][n])
                for n in a.collections]
    if options:
        print("\nfusion options, nDCG@10 per collection, mean, worst gap to the better leg")
    for opt, vals in sorted(options.items(), key=lambda kv: -sum(kv[1])):
        gap = min(v - b for v, b in zip(vals, best_leg, strict=True))
        print(f"  {opt:34} " + " ".join(f"{v:.3f}" for v in vals)
              + f"  mean {sum(vals) / len(vals):.3f}  worst {gap:+.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--split", choices=("test", "calibration", "all"), default="test")
    p.add_argument("--collections", nargs="+", default=list(data.NAMES))
    p.add_argument("--fusions", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--embed-backend", choices=("local", "torch"), default="local")
    p.add_argument("--embed-model-path", default="",
                   help="torch backend: a sentence-transformers directory (default: packaged)")
    harness.prepared_models()
    args = p.parse_args()
    EMBED = EmbedSettings(backend=args.embed_backend, model_path=args.embed_model_path)
    main(args)
