"""Quota counters shared by every server: `base.CounterStore` and one module per store."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from ...config import Settings
from .base import CounterStore
from .database import DatabaseCounters
from .fallback import LocalFallback
from .memory import MemoryCounters

__all__ = ["CounterStore", "DatabaseCounters", "LocalFallback", "MemoryCounters",
           "build_counters", "store_kind"]


def store_kind(settings: Settings) -> str:
    """METIS_AUTH__QUOTA_STORE, with `auto` resolved: Redis when one is configured for the
    counters or the cache, else the database."""
    auth = settings.auth
    if auth.quota_store != "auto":
        return auth.quota_store
    return "redis" if auth.quota_redis_url or settings.cache.backend == "redis" else "database"


def build_counters(settings: Settings, engine: AsyncEngine,
                   clock: Callable[[], float] = time.time) -> CounterStore:
    kind = store_kind(settings)
    auth = settings.auth
    limits = [auth.quotas, *auth.tenant_quotas.values()]
    if kind == "memory" or not any(q.questions_per_minute or q.llm_tokens_per_day or
                                   q.max_documents or q.max_storage_mb for q in limits):
        # No quota anywhere: nothing is ever counted, no connection is needed.
        return MemoryCounters(clock)
    if kind == "database":
        return DatabaseCounters(engine, clock)
    from .redis import RedisCounters

    url = settings.auth.quota_redis_url or settings.cache.redis_url
    return LocalFallback(RedisCounters(url, timeout_s=settings.auth.quota_timeout_ms / 1000),
                         clock=clock)
