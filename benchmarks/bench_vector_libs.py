"""Choose the embedded ANN library: hnswlib vs usearch vs faiss HNSW at 100k x 384 vectors.

For each library: build time, the smallest ef reaching recall@10 >= 0.98 against exact numpy
search over 1,000 held-out queries, p50/p99 single-query latency there (median of --runs runs),
index size, cost of adds after the build and of deletes (plus recall once 10% are deleted),
and a filtered search over a 30% allowed set with the library's own filter where it has one.

Data: benchmarks/.cache/vectors_100k.npy + queries.npy when present (real MiniLM embeddings),
otherwise a synthetic clustered, anisotropic mixture on the unit sphere (said in the output).

    .venv/bin/python benchmarks/bench_vector_libs.py [--libs hnswlib,usearch,faiss] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(__file__).parent / ".cache"
DIM = 384
K = 10
TARGET_RECALL = 0.98
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
M = 16
EF_CONSTRUCTION = 200


# ---------------------------------------------------------------- data (shared with bench_vector_search)


@dataclass
class Dataset:
    vectors: np.ndarray  # (n, DIM) float32, L2-normalised
    queries: np.ndarray  # (q, DIM) float32, L2-normalised, not in `vectors`
    source: str


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Chunks of documents of topics: a 3-level Gaussian mixture on the unit sphere.

    A power-law spectrum over a random basis makes it anisotropic, each document's chunks
    spread along a few document-specific directions, and document sizes are Zipf-like, which
    is roughly how sentence embeddings of a corpus look. Uniform random vectors would be far
    harder for every ANN index than real text and would mislead the choice.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = (1.0 + np.arange(dim)) ** -0.3

    def aniso(m: int) -> np.ndarray:
        return ((rng.normal(size=(m, dim)) * spectrum) @ basis.T).astype(np.float32)

    topics, docs_per_topic, local_rank = 64, 40, 24
    topic_centres = _unit(aniso(topics))
    n_docs = topics * docs_per_topic
    doc_centres = _unit(topic_centres[rng.integers(0, topics, n_docs)] + _unit(aniso(n_docs)))
    weights = rng.permutation(1.0 / (1 + np.arange(n_docs)) ** 0.7)
    doc_of = rng.choice(n_docs, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for doc in range(n_docs):
        rows = np.flatnonzero(doc_of == doc)
        if len(rows) == 0:
            continue
        directions = _unit(aniso(local_rank))
        coef = rng.normal(size=(len(rows), local_rank)).astype(np.float32) / np.sqrt(local_rank)
        noise = 0.75 * _unit(aniso(len(rows)))
        out[rows] = doc_centres[doc] + 1.5 * (coef @ directions + noise)
    return _unit(out)


def load_dataset(n: int = 100_000, n_queries: int = 1_000) -> Dataset:
    """Real cached embeddings if another benchmark produced them, else cached synthetic ones."""
    real, real_q = CACHE / "vectors_100k.npy", CACHE / "queries.npy"
    if real.exists() and real_q.exists():
        vectors = _unit(np.load(real)[:n])
        queries = _unit(np.load(real_q)[:n_queries])
        return Dataset(vectors, queries, f"real embeddings from {real} ({len(vectors):,} vectors)")
    synth = CACHE / f"synthetic_{n}_{n_queries}.npy"
    if synth.exists():
        both = np.load(synth)
    else:
        both = synthetic_vectors(n + n_queries)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(synth, both)
    return Dataset(
        both[n_queries:],
        both[:n_queries],
        f"SYNTHETIC clustered anisotropic mixture ({n:,} vectors; {real} not found)",
    )


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k row indices, best first."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ vectors.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(found: np.ndarray | list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def percentiles_ms(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------- library adapters


class Lib:
    name = ""
    filter_kind = "none"

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...
    def set_ef(self, ef: int) -> None: ...
    def search(self, query: np.ndarray, k: int) -> np.ndarray: ...
    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray: ...
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...
    def delete(self, ids: np.ndarray) -> None: ...
    def save(self, path: Path) -> None: ...
    def load(self, path: Path) -> None: ...

    def filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
        """Fallback: over-fetch by the inverse allowed fraction and keep the allowed ones."""
        frac = allowed.mean()
        fetch = min(int(k / max(frac, 1e-3) * 2) + k, len(allowed))
        self.set_ef(max(self.ef, fetch))
        ids = self.search(query, fetch)
        self.set_ef(self.ef)
        return ids[allowed[ids]][:k]


class Hnswlib(Lib):
    name = "hnswlib 0.8"
    filter_kind = "python callable"

    def __init__(self) -> None:
        import hnswlib

        self.mod = hnswlib
        self.index = hnswlib.Index(space="ip", dim=DIM)
        self.ef = 64

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.init_index(max_elements=len(vectors) * 2, M=M, ef_construction=EF_CONSTRUCTION)
        self.index.add_items(vectors, ids, num_threads=os.cpu_count() or 1)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.set_ef(ef)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(query, k=k, num_threads=1)[0][0].astype(np.int64)

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(queries, k=k)[0].astype(np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_items(vectors, ids, num_threads=1)

    def delete(self, ids: np.ndarray) -> None:
        for i in ids:
            self.index.mark_deleted(int(i))

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    def load(self, path: Path) -> None:
        self.index = self.mod.Index(space="ip", dim=DIM)
        self.index.load_index(str(path))
        self.index.set_ef(self.ef)

    def filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
        labels, _ = self.index.knn_query(
            query, k=k, num_threads=1, filter=lambda label: bool(allowed[label])
        )
        return labels[0].astype(np.int64)


class Usearch(Lib):
    name = "usearch 2.x"

    def __init__(self) -> None:
        from usearch.index import Index

        self.cls = Index
        self.index = self._new()
        self.ef = 64

    def _new(self):  # type: ignore[no-untyped-def]
        return self.cls(
            ndim=DIM, metric="ip", dtype="f32", connectivity=M, expansion_add=EF_CONSTRUCTION
        )

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(ids, vectors, threads=os.cpu_count() or 1)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.expansion_search = ef

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(query, k, threads=1).keys, np.int64)

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(queries, k).keys, np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(ids, vectors, threads=1)

    def delete(self, ids: np.ndarray) -> None:
        for i in ids:
            self.index.remove(int(i))

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    def load(self, path: Path) -> None:
        self.index = self._new()
        self.index.load(str(path))
        self.index.expansion_search = self.ef


class Faiss(Lib):
    name = "faiss HNSWFlat"
    filter_kind = "IDSelector (C++)"

    def __init__(self) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.ef = 64
        self.alive: np.ndarray | None = None  # HNSW has no remove_ids: tombstones via a selector

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        # faiss HNSW numbers rows 0..n-1; ids here are exactly that, so no IDMap is needed.
        self.faiss.omp_set_num_threads(os.cpu_count() or 1)
        self.index.add(vectors)
        self.faiss.omp_set_num_threads(1)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.hnsw.efSearch = ef

    def _params(self, allowed: np.ndarray | None):  # type: ignore[no-untyped-def]
        mask = allowed if self.alive is None else (
            self.alive if allowed is None else allowed & self.alive[: len(allowed)]
        )
        if mask is None:
            return None
        bits = np.packbits(mask, bitorder="little")
        self._keep = bits  # the selector keeps only a pointer: hold the buffer alive
        sel = self.faiss.IDSelectorBitmap(len(mask), self.faiss.swig_ptr(bits))
        return self.faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        params = self._params(None) if self.alive is not None else None
        _, labels = self.index.search(query.reshape(1, -1), k, params=params)
        return labels[0]

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(os.cpu_count() or 1)
        try:
            _, labels = self.index.search(queries, k, params=self._params(None))
        finally:
            self.faiss.omp_set_num_threads(1)
        return labels

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        assert ids[0] == self.index.ntotal
        self.index.add(vectors)

    def delete(self, ids: np.ndarray) -> None:
        if self.alive is None:
            self.alive = np.ones(self.index.ntotal, bool)
        self.alive[ids] = False

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def load(self, path: Path) -> None:
        self.index = self.faiss.read_index(str(path))
        self.index.hnsw.efSearch = self.ef

    def filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
        params = self._params(allowed)
        _, labels = self.index.search(query.reshape(1, -1), k, params=params)
        return labels[0][labels[0] >= 0]


LIBS: dict[str, Callable[[], Lib]] = {"hnswlib": Hnswlib, "usearch": Usearch, "faiss": Faiss}


# ---------------------------------------------------------------- measurement


def time_queries(
    fn: Callable[[np.ndarray], object], queries: np.ndarray
) -> tuple[list[float], list[float]]:
    """Wall-clock and this thread's CPU seconds per query.

    CPU time is shown too because the 2 shared cores here are often oversubscribed, and then
    wall-clock tails measure the scheduler rather than the library.
    """
    for q in queries[:50]:  # warm caches and branch predictors
        fn(q)
    wall, cpu = [], []
    for q in queries:
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(q)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def median_latency(
    fn: Callable[[np.ndarray], object], queries: np.ndarray, runs: int
) -> tuple[float, float, float, float]:
    """Median over runs of (wall p50, wall p99, cpu p50, cpu p99) in ms."""
    results = []
    for _ in range(runs):
        wall, cpu = time_queries(fn, queries)
        results.append((*percentiles_ms(wall), *percentiles_ms(cpu)))
    return tuple(statistics.median(r[i] for r in results) for i in range(4))  # type: ignore[return-value]


def bench_one(key: str, data: Dataset, truth: np.ndarray, runs: int) -> dict[str, object]:
    lib = LIBS[key]()
    n, held = len(data.vectors), 1_000
    base, late = data.vectors[: n - held], data.vectors[n - held :]
    row: dict[str, object] = {"lib": lib.name}

    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    lib.build(base, np.arange(n - held))
    row["build_s"] = time.perf_counter() - t0
    row["rss_mb"] = rss_mb() - rss0

    # Adds after the build, one at a time as ingestion does (single thread).
    t0 = time.perf_counter()
    for i in range(held):
        lib.add(late[i : i + 1], np.arange(n - held + i, n - held + i + 1))
    row["add_us"] = (time.perf_counter() - t0) / held * 1e6

    sweep = {}
    for ef in EF_SWEEP:
        lib.set_ef(ef)
        sweep[ef] = recall_at_k(lib.search_batch(data.queries, K), truth)
        if sweep[ef] >= TARGET_RECALL + 0.005:
            break
    ef = next((e for e, r in sweep.items() if r >= TARGET_RECALL), max(sweep))
    lib.set_ef(ef)
    row["sweep"] = " ".join(f"{e}:{r:.3f}" for e, r in sweep.items())
    row["ef"] = ef
    row["recall"] = recall_at_k([lib.search(q, K) for q in data.queries], truth)
    (row["p50_ms"], row["p99_ms"], row["cpu_p50_ms"], row["cpu_p99_ms"]) = median_latency(
        lambda q: lib.search(q, K), data.queries, runs
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.bin"
        t0 = time.perf_counter()
        lib.save(path)
        row["save_s"] = time.perf_counter() - t0
        row["size_mb"] = path.stat().st_size / 2**20
        t0 = time.perf_counter()
        lib.load(path)
        row["load_s"] = time.perf_counter() - t0

    # Filtered search over a random 30% of the collection.
    rng = np.random.default_rng(1)
    allowed = rng.random(n) < 0.30
    allowed_rows = np.flatnonzero(allowed)
    f_truth = allowed_rows[exact_top_k(data.vectors[allowed_rows], data.queries, K)]
    row["filter_kind"] = lib.filter_kind
    row["f30_recall"] = recall_at_k([lib.filtered(q, K, allowed) for q in data.queries], f_truth)
    row["f30_p50_ms"], row["f30_p99_ms"], *_ = median_latency(
        lambda q: lib.filtered(q, K, allowed), data.queries, runs
    )

    # Delete 10% and check recall against exact search over what is left.
    gone = rng.choice(n, n // 10, replace=False)
    t0 = time.perf_counter()
    lib.delete(gone)
    row["delete_us"] = (time.perf_counter() - t0) / len(gone) * 1e6
    keep = np.setdiff1d(np.arange(n), gone)
    d_truth = keep[exact_top_k(data.vectors[keep], data.queries, K)]
    found = [lib.search(q, K) for q in data.queries]
    row["del_recall"] = recall_at_k(found, d_truth)
    row["del_leaks"] = int(sum(np.isin(f, gone).sum() for f in found))
    row["del_p50_ms"], *_ = median_latency(lambda q: lib.search(q, K), data.queries, 1)
    return row


def bench_numpy_exact(data: Dataset, runs: int) -> dict[str, object]:
    vectors = data.vectors

    def search(q: np.ndarray) -> np.ndarray:
        scores = vectors @ q
        part = np.argpartition(-scores, K)[:K]
        return part[np.argsort(-scores[part])]

    p50, p99, cpu50, cpu99 = median_latency(search, data.queries, runs)
    return {"lib": "numpy exact", "recall": 1.0, "p50_ms": p50, "p99_ms": p99,
            "cpu_p50_ms": cpu50, "cpu_p99_ms": cpu99, "size_mb": vectors.nbytes / 2**20}


def fmt(v: object, spec: str = ".2f") -> str:
    if v is None or v == "":
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def print_table(rows: list[dict[str, object]]) -> None:
    cols = [
        ("lib", "library", "s"), ("build_s", "build s", ".1f"), ("ef", "ef", "s"),
        ("recall", "recall@10", ".3f"), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
        ("cpu_p50_ms", "CPU p50 ms", ".3f"), ("cpu_p99_ms", "CPU p99 ms", ".3f"),
        ("size_mb", "file MB", ".0f"), ("rss_mb", "RSS+ MB", ".0f"), ("save_s", "save s", ".2f"),
        ("load_s", "load s", ".2f"), ("add_us", "add us/vec", ".0f"),
        ("delete_us", "del us/id", ".1f"), ("del_recall", "recall after 10% del", ".3f"),
        ("del_leaks", "deleted hits", "s"), ("del_p50_ms", "p50 after del", ".3f"),
        ("filter_kind", "native filter", "s"), ("f30_recall", "30%-filter recall", ".3f"),
        ("f30_p50_ms", "30%-filter p50", ".3f"), ("f30_p99_ms", "30%-filter p99", ".3f"),
    ]
    cells = [[h for _, h, _ in cols]] + [
        [fmt(r.get(key), spec if spec != "s" else "") for key, _, spec in cols] for r in rows
    ]
    # Transposed: one column per library reads better than a 19-column row.
    for i, (_, header, _) in enumerate(cols):
        print(f"{header:<22}" + "".join(f"{r[i]:>18}" for r in cells[1:]))
    print()
    for r in rows:
        if r.get("sweep"):
            print(f"ef sweep {r['lib']}: recall@10 {r['sweep']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default="hnswlib,usearch,faiss")
    parser.add_argument("--runs", type=int, default=3, help="latency runs; the median is shown")
    args = parser.parse_args()

    data = load_dataset()
    print(f"data: {data.source}; {len(data.queries):,} held-out queries; dim {DIM}")
    print(f"HNSW M={M} ef_construction={EF_CONSTRUCTION}; build uses {os.cpu_count()} threads, "
          f"queries 1 thread; latency = median over {args.runs} runs of 1,000 single queries")
    truth = exact_top_k(data.vectors, data.queries, K)
    top = np.sort(data.queries[:200] @ data.vectors.T, axis=1)[:, ::-1]
    print(f"median cosine of true top-1 {np.median(top[:, 0]):.3f}, top-10 "
          f"{np.median(top[:, 9]):.3f}\n")
    rows = [bench_numpy_exact(data, args.runs)]
    for key in args.libs.split(","):
        rows.append(bench_one(key.strip(), data, truth, args.runs))
        gc.collect()
    print_table(rows)


if __name__ == "__main__":
    main()
