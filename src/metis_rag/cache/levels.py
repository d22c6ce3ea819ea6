"""The cache levels of Metis, each a `TieredCache` over the same backends with its own prefix.

Keys are ``<level>:<namespace>:<collection id>:<collection version>:...`` for the levels that
depend on a collection's content (exact, retrieval), so bumping a collection's version makes
all of its entries unreachable at once and they age out by TTL. Embedding, LLM and document
entries are content-addressed (model + text hash, model + full prompt, file hash) and need no
invalidation. The semantic level is an in-process ANN index per (namespace, collection,
version, answer shape) pointing at exact-level entries.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CacheSettings
from .base import CacheBackend
from .codec import Codec
from .disk import DiskBackend
from .memory import MemoryBackend
from .tiered import TieredCache

LEVELS = ("exact", "semantic", "retrieval", "llm", "embedding", "document")


def digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()


_SPACES = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower()).rstrip(" ?.!")


# Identifiers and figures: a word with a digit, an inner dot or underscore, an inner capital
# (camelCase), or anything in backticks or quotes. "Queue.get" and "Queue.get_nowait" embed
# at 0.96 cosine and may share their top source, yet ask different things.
_ENTITY = re.compile(
    r"`[^`]+`|\"[^\"]+\"|\b\w*\d\w*\b|\b\w+(?:[._]\w+)+\b|\b[a-z]+[A-Z]\w*\b"
)


def entities(text: str) -> frozenset[str]:
    """The identifiers and figures a question names; two questions whose sets differ never
    share a semantic-cache answer."""
    return frozenset(m.group(0).strip("`\"").lower() for m in _ENTITY.finditer(text))


@dataclass(frozen=True, slots=True)
class SemanticHit:
    key: str
    similarity: float
    question: str


class _Partition:
    """One partition's questions: an exact scan while small, an HNSW index once large."""

    def __init__(self, dim: int, exact_max: int) -> None:
        self._buf = np.zeros((16, dim), dtype=np.float32)  # grown by doubling, not per add
        self._exact_max = exact_max
        self._ann: Any = None
        self.keys: list[str] = []
        self.questions: list[str] = []

    @property
    def vectors(self) -> np.ndarray:
        return self._buf[: len(self.keys)]

    def append(self, vector: np.ndarray, key: str, question: str) -> None:
        n = len(self.keys)
        if n == len(self._buf):
            self._buf = np.vstack([self._buf, np.zeros_like(self._buf)])
        self._buf[n] = vector
        self.keys.append(key)
        self.questions.append(question)
        if self._ann is not None:
            if self._ann.get_current_count() == self._ann.get_max_elements():
                self._ann.resize_index(2 * self._ann.get_max_elements())
            self._ann.add_items(vector.reshape(1, -1), [n])
        elif n + 1 > self._exact_max:
            self._build_ann()

    def _build_ann(self) -> None:
        import hnswlib

        n, dim = len(self.keys), self._buf.shape[1]
        ann = hnswlib.Index(space="ip", dim=dim)  # unit vectors: inner product = cosine
        ann.init_index(max_elements=2 * n, ef_construction=100, M=16)
        ann.add_items(self.vectors, np.arange(n))
        ann.set_ef(64)
        self._ann = ann

    def best(self, vector: np.ndarray) -> tuple[int, float]:
        """Index and cosine similarity of the closest question."""
        if self._ann is None:
            sims = self.vectors @ vector
            i = int(np.argmax(sims))
            return i, float(sims[i])
        labels, distances = self._ann.knn_query(vector.reshape(1, -1), k=1)
        return int(labels[0][0]), 1.0 - float(distances[0][0])


class SemanticIndex:
    """Earlier questions' embeddings per partition; a lookup returns the most similar one.

    Each partition is one (namespace, collection, version, answer shape), so a lookup can never
    cross tenants, collections, versions or answer-shaping settings. A partition is scanned
    exactly up to `exact_max` questions (well under a millisecond, and it never misses), then
    gets an HNSW index (hnswlib) of its own. Partitions are evicted least recently used
    beyond `max_entries` questions in all.
    """

    def __init__(self, dim: int, max_entries: int, exact_max: int = 2048) -> None:
        self._dim = dim
        self._exact_max = exact_max
        self._max_entries = max_entries
        self._parts: OrderedDict[tuple[str, ...], _Partition] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def lookup(self, partition: tuple[str, ...], vector: np.ndarray, threshold: float) -> SemanticHit | None:
        with self._lock:
            part = self._parts.get(partition)
            if part is None or not part.keys:
                self.misses += 1
                return None
            self._parts.move_to_end(partition)
            best, similarity = part.best(vector)
            if similarity < threshold:
                self.misses += 1
                return None
            self.hits += 1
            return SemanticHit(part.keys[best], similarity, part.questions[best])

    def reject(self) -> None:
        """The last hit was not used (its answer is gone, or it failed verification)."""
        with self._lock:
            self.hits -= 1
            self.misses += 1

    def add(self, partition: tuple[str, ...], vector: np.ndarray, key: str, question: str) -> None:
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                part = self._parts[partition] = _Partition(self._dim, self._exact_max)
            if key in part.keys:
                return
            part.append(vector, key, question)
            self._size += 1
            while self._size > self._max_entries and self._parts:
                _, old = self._parts.popitem(last=False)
                self._size -= len(old.keys)

    def clear(self, namespace: str | None = None, prefix: str = "") -> None:
        """`prefix`: only the namespaces that start with it (a tenant's)."""
        with self._lock:
            for p in [p for p in self._parts if (namespace is None or p[0] == namespace)
                      and p[0].startswith(prefix)]:
                self._size -= len(self._parts.pop(p).keys)

    @property
    def entries(self) -> int:
        return self._size


@dataclass
class Savings:
    """What the caches spared: LLM calls and tokens, and model/retrieval time."""

    llm_calls: int = 0
    tokens: int = 0
    saved_ms: dict[str, float] = field(default_factory=dict)

    def add(self, level: str, saved_ms: float, tokens: int, llm_call: bool) -> None:
        self.saved_ms[level] = self.saved_ms.get(level, 0.0) + max(0.0, saved_ms)
        self.tokens += tokens
        self.llm_calls += int(llm_call)


@dataclass
class Caches:
    settings: CacheSettings
    backends: list[CacheBackend]
    exact: TieredCache
    retrieval: TieredCache
    llm: TieredCache
    embedding: TieredCache
    document: TieredCache
    semantic: SemanticIndex
    savings: Savings = field(default_factory=Savings)

    def level(self, name: str) -> TieredCache:
        return {"exact": self.exact, "retrieval": self.retrieval, "llm": self.llm,
                "embedding": self.embedding, "document": self.document}[name]

    async def clear(self, *, namespace: str | None = None, level: str | None = None,
                    tenant_prefix: str | None = None) -> None:
        """Drop entries of one level and/or namespace (a collection is cleared by its version).

        `tenant_prefix`: only within one tenant's namespaces, on the levels keyed by namespace
        (the others are keyed by content and shared by every tenant)."""
        if tenant_prefix is not None:
            scope = f"{namespace}:" if namespace is not None else tenant_prefix
            for name in [level] if level else ["exact", "retrieval"]:
                if name in ("exact", "retrieval"):
                    await self.level(name).clear(scope)
            if level in (None, "semantic", "exact"):
                self.semantic.clear(namespace, prefix=tenant_prefix)
            return
        names = [level] if level else [n for n in LEVELS if n != "semantic"]
        for name in names:
            if name == "semantic":
                continue
            scoped = name in ("exact", "retrieval") and namespace is not None
            await self.level(name).clear(f"{namespace}:" if scoped else None)
        if level in (None, "semantic", "exact"):
            self.semantic.clear(namespace)

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        price = self.settings.price_per_1k_tokens
        for name in LEVELS:
            if name == "semantic":
                s = self.semantic
                lookups = s.hits + s.misses
                out[name] = {"hits": s.hits, "misses": s.misses,
                             "hit_ratio": s.hits / lookups if lookups else 0.0,
                             "entries": s.entries}
            else:
                level = self.level(name)
                out[name] = level.stats().to_dict()
                usage = [await b.usage(level.prefix) for b in self.backends]
                out[name]["entries_by_tier"] = [u[0] if u else None for u in usage]
                # The last tier that can tell holds the most (tiers in front hold a subset).
                known = [u for u in usage if u is not None]
                out[name]["entries"], out[name]["bytes"] = known[-1] if known else (None, None)
            out[name]["saved_ms"] = round(self.savings.saved_ms.get(name, 0.0), 1)
        tiers = []
        for backend in self.backends:
            b = await backend.stats()
            tiers.append({"backend": type(backend).__name__, "entries": b.entries,
                          "bytes": b.bytes, "evictions": b.evictions, "errors": b.errors,
                          "healthy": b.healthy})
        return {
            "levels": out,
            "tiers": tiers,
            "llm_calls_saved": self.savings.llm_calls,
            "tokens_saved": self.savings.tokens,
            "estimated_cost_saved": round(self.savings.tokens / 1000 * price, 6),
            "price_per_1k_tokens": price,
        }


async def open_caches(settings: CacheSettings, data_dir: Any, dim: int,
                      stack: AsyncExitStack) -> Caches:
    memory = MemoryBackend(max_entries=settings.memory_max_entries,
                           max_bytes=int(settings.memory_max_mb * 1024 * 1024))
    backends: list[CacheBackend] = [memory]
    if settings.backend == "disk":
        backends.append(DiskBackend(data_dir / "cache",
                                    max_bytes=int(settings.disk_max_mb * 1024 * 1024)))
    elif settings.backend == "redis":
        from .redis import RedisBackend

        backends.append(RedisBackend(settings.redis_url,
                                     timeout_s=settings.redis_timeout_ms / 1000))
    for backend in backends:
        await backend.start()
        stack.push_async_callback(backend.close)
    codec = Codec(compress_min_bytes=settings.compress_min_bytes)

    def level(name: str, ttl_s: float) -> TieredCache:
        return TieredCache(backends, prefix=f"{name}:", default_ttl_s=ttl_s, codec=codec)

    return Caches(
        settings=settings,
        backends=backends,
        exact=level("exact", settings.query_ttl_s),
        retrieval=level("retrieval", settings.retrieval_ttl_s),
        llm=level("llm", settings.llm_ttl_s),
        embedding=level("embedding", settings.embedding_ttl_s),
        document=level("document", settings.document_ttl_s),
        semantic=SemanticIndex(dim, settings.semantic_max_entries),
    )
