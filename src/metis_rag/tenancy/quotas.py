"""Per-tenant quotas: stored documents and bytes (413), questions a minute and LLM tokens a
UTC day (429 with Retry-After), counted in a `CounterStore` that every server shares.

Rates are fixed windows (a UTC minute, a UTC day) keyed by their number, so a counter never
needs a reset: a new window is a new key and the old one expires. Storage is what the tenant's
documents hold, plus its ingestion tasks not yet finished, plus the uploads being checked at
this moment on any server (held in a counter from the check until their tasks are queued, so
two concurrent uploads cannot both take the last megabyte).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import AuthSettings, QuotaSettings
from ..errors import QuotaExceeded
from ..store import repo
from ..store.models import Collection, Document
from ..tasks.models import Task
from ..tasks.types import FINISHED
from .counters import CounterStore, MemoryCounters

_DAY_S = 86_400.0
_HELD_TTL_S = 600.0  # an upload's hold outlives any parse; a crashed server's hold expires


class Quotas:
    def __init__(self, settings: AuthSettings, counters: CounterStore | None = None,
                 sessions: async_sessionmaker[AsyncSession] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._default = settings.quotas
        self._per_tenant = settings.tenant_quotas
        self._prefix = settings.quota_key_prefix
        self.counters = counters if counters is not None else MemoryCounters(clock)
        self._sessions = sessions
        self._clock = clock

    def of(self, tenant: str) -> QuotaSettings:
        return self._per_tenant.get(tenant, self._default)

    async def admit_question(self, tenant: str) -> None:
        """Counts one question against the tenant's rate; refuses it once the day's tokens
        are spent."""
        q = self.of(tenant)
        if q.llm_tokens_per_day:
            now = self._clock()
            spent = await self.counters.get(self._key("tokens", tenant, int(now // _DAY_S)))
            if spent >= q.llm_tokens_per_day:
                raise QuotaExceeded(
                    f"Quota exceeded: llm_tokens_per_day ({q.llm_tokens_per_day}) is spent for "
                    "today (UTC).", quota="llm_tokens_per_day",
                    retry_after_s=_DAY_S - now % _DAY_S)
        if q.questions_per_minute:
            await self._take_question(tenant, q.questions_per_minute)

    async def _take_question(self, tenant: str, per_minute: float) -> None:
        # Under one a minute, the window widens to hold one question (0.5 = one per 2 minutes).
        window_s, limit = (60.0, math.floor(per_minute)) if per_minute >= 1 else (
            60.0 / per_minute, 1)
        now = self._clock()
        window = int(now // window_s)
        asked = await self.counters.add(self._key("questions", tenant, window), 1, 2 * window_s)
        if asked > limit:
            wait_s = window_s - now % window_s
            raise QuotaExceeded(
                f"Quota exceeded: questions_per_minute ({per_minute:g}); retry in "
                f"{math.ceil(wait_s)} s.", quota="questions_per_minute", retry_after_s=wait_s)

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        if tokens <= 0 or not self.of(tenant).llm_tokens_per_day:
            return
        day = int(self._clock() // _DAY_S)
        await self.counters.add(self._key("tokens", tenant, day), tokens, 2 * _DAY_S)

    @asynccontextmanager
    async def storage(self, tenant: str, documents: int, size_bytes: int) -> AsyncIterator[None]:
        """Refuses (413) an upload that would take the tenant past its storage quotas, and
        holds its share until the block ends (queue the tasks inside it). A replace passes
        only the bytes it adds; one that shrinks a document is always allowed."""
        q = self.of(tenant)
        documents, size_bytes = max(0, documents), max(0, size_bytes)
        if not (q.max_documents or q.max_storage_mb) or not (documents or size_bytes):
            yield
            return
        docs_key, bytes_key = self._key("held-docs", tenant), self._key("held-bytes", tenant)
        held_docs = await self.counters.add(docs_key, documents, _HELD_TTL_S)
        try:
            held_bytes = await self.counters.add(bytes_key, size_bytes, _HELD_TTL_S)
            try:
                await self._check_storage(tenant, q, documents, size_bytes, held_docs - documents,
                                          held_bytes - size_bytes)
                yield
            finally:
                await self.counters.add(bytes_key, -size_bytes, _HELD_TTL_S)
        finally:
            await self.counters.add(docs_key, -documents, _HELD_TTL_S)

    async def _check_storage(self, tenant: str, q: QuotaSettings, documents: int,
                             size_bytes: int, others_docs: int, others_bytes: int) -> None:
        assert self._sessions is not None, "storage quotas need the database"
        async with self._sessions() as session:
            count, stored = await _usage(session, tenant)
        count += max(0, others_docs)
        stored += max(0, others_bytes)
        if q.max_documents and count + documents > q.max_documents:
            raise QuotaExceeded(
                f"Quota exceeded: max_documents ({q.max_documents}); the tenant stores or is "
                f"ingesting {count} and this adds {documents}.", quota="max_documents")
        limit = int(q.max_storage_mb * 1024 * 1024)
        if q.max_storage_mb and stored + size_bytes > limit:
            raise QuotaExceeded(
                f"Quota exceeded: max_storage_mb ({q.max_storage_mb:g} MB); the tenant stores or "
                f"is ingesting {stored / 1048576:.1f} MB and this adds "
                f"{size_bytes / 1048576:.1f} MB.", quota="max_storage_mb")

    def _key(self, kind: str, tenant: str, window: int | None = None) -> str:
        suffix = "" if window is None else f":{window}"
        return f"{self._prefix}{kind}:{tenant}{suffix}"


async def _usage(session: AsyncSession, tenant: str) -> tuple[int, int]:
    """(files, bytes) the tenant stores or is ingesting: its documents, and its ingestion tasks
    not finished whose document is not stored yet (a task commits its document a moment before
    it is marked done). One statement, so one snapshot: a task that commits between two reads
    would otherwise be counted in neither."""
    params = Task.params
    stored = select(Document.id).join(Collection, Collection.id == Document.collection_id).where(
        Collection.tenant == tenant, Collection.name == params["collection"].as_string(),
        Document.content_hash == params["content_hash"].as_string()).exists()
    queued = (Task.tenant == tenant, Task.type == "ingest_document",
              Task.status.not_in(sorted(FINISHED)), ~stored)
    mine = Document.collection_id.in_(repo.tenant_collections(tenant))
    row = (await session.execute(select(
        select(func.count(Document.id)).where(mine).scalar_subquery(),
        select(func.coalesce(func.sum(Document.size_bytes), 0)).where(mine).scalar_subquery(),
        # A replace adds no document, and only the bytes it adds over the old content.
        select(func.count(Task.id)).where(*queued, params["replace"].as_string().is_(None))
        .scalar_subquery(),
        select(func.coalesce(func.sum(func.coalesce(params["added_bytes"].as_integer(),
                                                    params["size_bytes"].as_integer())), 0))
        .where(*queued).scalar_subquery(),
    ))).one()
    return int(row[0]) + int(row[2]), int(row[1]) + int(row[3])
