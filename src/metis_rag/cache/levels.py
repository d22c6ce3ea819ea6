"""The cache levels of Metis, each a `TieredCache` over the same backends with its own prefix.

Keys are ``<level>:<namespace>:<collection id>:<collection version>:...`` for the levels that
depend on a collection's content (exact, retrieval), so bumping a collection's version makes
all of its entries unreachable at once and they age out by TTL. Entries that read the
documents' analysis have ``<version>.<analysis version>`` there instead (`CollectionRef.key`):
a stored analysis makes only them unreachable. Embedding, LLM and document
entries are content-addressed (model + text hash, model + full prompt, file hash) and need no
invalidation. The semantic level (`semantic.py`) indexes earlier questions per (namespace,
collection, version, answer shape), pointing at exact-level entries.
"""

from __future__ import annotations

import hashlib
import logging
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import CacheSettings
from .base import CacheBackend
from .codec import Codec
from .disk import DiskBackend
from .equivalence import Equivalence, Model, entities
from .memory import MemoryBackend
from .postgres import PostgresBackend
from .semantic import SemanticIndex
from .tiered import TieredCache

logger = logging.getLogger(__name__)

__all__ = ["Caches", "Savings", "digest", "entities", "normalize_question", "open_caches"]

LEVELS = ("exact", "semantic", "retrieval", "llm", "embedding", "document", "tool")
# Decoded answers the exact level keeps in front of its tiers (`TieredCache(memo=...)`).
EXACT_MEMO_ENTRIES = 1024
# Decoded parses the document level keeps: an upload's parse is read again by its ingestion
# task, and a file sent again (a client retrying, a hostile one in a loop) by its upload. Few,
# since one may hold 5 million characters; decoding that on the event loop took 8-30 ms.
DOCUMENT_MEMO_ENTRIES = 2


def digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()


_SPACES = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower()).rstrip(" ?.!")


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
    # Agent tool results (agent.registry): keyed ``<tenant>:<collection>:<version>:...`` when
    # the tool reads documents, so a collection's new version makes them unreachable (and a
    # new analysis version those that read the analysis).
    tool: TieredCache
    savings: Savings = field(default_factory=Savings)

    def level(self, name: str) -> TieredCache:
        return {"exact": self.exact, "retrieval": self.retrieval, "llm": self.llm,
                "embedding": self.embedding, "document": self.document,
                "tool": self.tool}[name]

    async def clear(self, *, namespace: str | None = None, level: str | None = None,
                    tenant_prefix: str | None = None) -> None:
        """Drop entries of one level and/or namespace (a collection is cleared by its version).

        `tenant_prefix`: only within one tenant's namespaces, on the levels keyed by namespace
        (the others are keyed by content and shared by every tenant)."""
        if tenant_prefix is not None:
            scope = f"{namespace}:" if namespace is not None else tenant_prefix
            for name in [level] if level else ["exact", "retrieval", "tool"]:
                if name in ("exact", "retrieval", "tool"):
                    await self.level(name).clear(scope)
            if level in (None, "semantic", "exact"):
                await self.semantic.clear(namespace, prefix=tenant_prefix)
            return
        names = [level] if level else [n for n in LEVELS if n != "semantic"]
        for name in names:
            if name == "semantic":
                continue
            # Tool keys start with the tenant (see agent.registry): a single-tenant namespace
            # clear drops the whole tool level, which is never wrong, only colder.
            scoped = name in ("exact", "retrieval") and namespace is not None
            await self.level(name).clear(f"{namespace}:" if scoped else None)
        if level in (None, "semantic", "exact"):
            await self.semantic.clear(namespace)

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        price = self.settings.price_per_1k_tokens
        for name in LEVELS:
            if name == "semantic":
                out[name] = self.semantic.stats()
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
                      stack: AsyncExitStack, engine: AsyncEngine | None = None) -> Caches:
    """`engine`: the database, which `backend=postgres` stores the shared tier in."""
    memory = MemoryBackend(max_entries=settings.memory_max_entries,
                           max_bytes=int(settings.memory_max_mb * 1024 * 1024))
    backends: list[CacheBackend] = [memory]
    # Pub/sub channels are not per database: the channel carries the URL's database and prefix.
    channel = f"{settings.redis_key_prefix}invalidations:{settings.redis_url.rsplit('/', 1)[-1]}"
    if settings.backend == "disk":
        backends.append(DiskBackend(data_dir / "cache",
                                    max_bytes=int(settings.disk_max_mb * 1024 * 1024)))
    elif settings.backend == "redis":
        from .redis import RedisBackend

        backends.append(RedisBackend(settings.redis_url, namespace=settings.redis_key_prefix,
                                     invalidation_channel=channel,
                                     timeout_s=settings.redis_timeout_ms / 1000))
    elif settings.backend == "postgres":
        if engine is None:
            raise ValueError("METIS_CACHE__BACKEND=postgres needs the database engine")
        backends.append(PostgresBackend(engine))
    for backend in backends:
        await backend.start()
        stack.push_async_callback(backend.close)
    if settings.backend == "redis":
        from .broadcast import InvalidationListener

        # Other servers' clears and deletes reach this server's memory tier too.
        listener = InvalidationListener(settings.redis_url, channel, [memory])
        await listener.start()
        stack.push_async_callback(listener.close)
    codec = Codec(compress_min_bytes=settings.compress_min_bytes)

    def level(name: str, ttl_s: float, memo: int = 0) -> TieredCache:
        return TieredCache(backends, prefix=f"{name}:", default_ttl_s=ttl_s, codec=codec,
                           memo=memo)

    for old in ("semantic_threshold", "semantic_verify_threshold"):
        if getattr(settings, old) is not None:
            logger.warning("METIS_CACHE__%s is deprecated and ignored: semantic hits are decided "
                           "by METIS_CACHE__SEMANTIC_MAX_ERROR", old.upper())
    equivalence = Equivalence(Model.load(), settings.semantic_max_error)
    if equivalence.off_reason is not None:
        # Logged once: each lookup it skips is counted in /api/cache/stats instead.
        (logger.info if settings.semantic_max_error == 0 else logger.warning)(
            "%s: the semantic level serves nothing and skips its lookups (questions are still "
            "appended to a shared list, if any, for servers with a looser bound)",
            equivalence.off_reason)
    # The shared, durable tier holds the semantic lists; with `memory` they stay in-process.
    log = backends[-1] if settings.backend != "memory" else None
    return Caches(
        settings=settings,
        backends=backends,
        # Cached answers are read far more often than written: a hit on unchanged bytes skips
        # their decoding (checksum, zstd, JSON: a tenth of a saturated server's main thread).
        exact=level("exact", settings.query_ttl_s, memo=EXACT_MEMO_ENTRIES),
        retrieval=level("retrieval", settings.retrieval_ttl_s),
        llm=level("llm", settings.llm_ttl_s),
        embedding=level("embedding", settings.embedding_ttl_s),
        document=level("document", settings.document_ttl_s, memo=DOCUMENT_MEMO_ENTRIES),
        tool=level("tool", settings.tool_ttl_s),
        semantic=SemanticIndex(dim, settings.semantic_max_entries, equivalence, log=log,
                               ttl_s=settings.query_ttl_s,
                               mirror=settings.semantic_search == "mirror",
                               warm_wait_ms=settings.semantic_warm_wait_ms),
    )
