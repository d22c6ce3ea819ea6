"""Per-tenant quotas: stored documents and bytes (413), questions a minute and LLM tokens a
UTC day (429 with Retry-After). Rates and token counts are kept per process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from ..config import AuthSettings, QuotaSettings
from ..errors import QuotaExceeded
from ..store import repo

_DAY_S = 86_400.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Quotas:
    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.time) -> None:
        self._default = settings.quotas
        self._per_tenant = settings.tenant_quotas
        self._clock = clock
        self._questions: dict[str, _Bucket] = {}
        self._tokens: dict[str, tuple[int, int]] = {}  # tenant -> (UTC day, tokens spent)

    def of(self, tenant: str) -> QuotaSettings:
        return self._per_tenant.get(tenant, self._default)

    def admit_question(self, tenant: str) -> None:
        """Counts one question against the tenant's rate and its day's tokens."""
        q = self.of(tenant)
        if q.llm_tokens_per_day:
            day, spent = self._tokens.get(tenant, (-1, 0))
            now = self._clock()
            if day == int(now // _DAY_S) and spent >= q.llm_tokens_per_day:
                raise QuotaExceeded(
                    f"Quota exceeded: llm_tokens_per_day ({q.llm_tokens_per_day}) is spent for "
                    "today (UTC).", quota="llm_tokens_per_day",
                    retry_after_s=_DAY_S - now % _DAY_S)
        if q.questions_per_minute:
            self._take_question(tenant, q.questions_per_minute)

    def _take_question(self, tenant: str, per_minute: float) -> None:
        now = self._clock()
        rate = per_minute / 60.0
        b = self._questions.get(tenant)
        if b is None:
            b = self._questions[tenant] = _Bucket(per_minute, now)
        b.tokens = min(per_minute, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            wait_s = (1.0 - b.tokens) / rate
            raise QuotaExceeded(
                f"Quota exceeded: questions_per_minute ({per_minute:g}); retry in "
                f"{math.ceil(wait_s)} s.", quota="questions_per_minute", retry_after_s=wait_s)
        b.tokens -= 1.0

    def spend_tokens(self, tenant: str, tokens: int) -> None:
        if tokens <= 0 or not self.of(tenant).llm_tokens_per_day:
            return
        today = int(self._clock() // _DAY_S)
        day, spent = self._tokens.get(tenant, (today, 0))
        self._tokens[tenant] = (today, (spent if day == today else 0) + tokens)

    async def admit_documents(
        self, session: AsyncSession, tenant: str, documents: int, size_bytes: int
    ) -> None:
        """Refuses (413) an upload that would take the tenant past its storage quotas."""
        q = self.of(tenant)
        if not (q.max_documents or q.max_storage_mb):
            return
        count, stored = await repo.tenant_usage(session, tenant)
        if q.max_documents and count + documents > q.max_documents:
            raise QuotaExceeded(
                f"Quota exceeded: max_documents ({q.max_documents}); the tenant stores {count} "
                f"and this adds {documents}.", quota="max_documents")
        limit = int(q.max_storage_mb * 1024 * 1024)
        if q.max_storage_mb and stored + size_bytes > limit:
            raise QuotaExceeded(
                f"Quota exceeded: max_storage_mb ({q.max_storage_mb:g} MB); the tenant stores "
                f"{stored / 1048576:.1f} MB and this adds {size_bytes / 1048576:.1f} MB.",
                quota="max_storage_mb")
