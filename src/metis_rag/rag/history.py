"""`ConversationLog`: the database work of every question, batched across concurrent requests.

Each question reads its collection (name -> id and version) and, once answered, writes its
conversation (if new) and two messages. Done one request at a time those are a read and a
write transaction per question, and concurrent requests queue on the database; here
concurrent requests share one SELECT and one transaction (group commit, via `MicroBatcher`),
and each caller still waits until its own rows are committed. A batch that fails is retried
one request at a time, so a bad request fails alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..batching import MicroBatcher
from ..errors import NotFound
from ..store.models import Collection, Conversation, Message, utcnow


@dataclass(frozen=True, slots=True)
class CollectionRef:
    id: int
    name: str
    version: int


@dataclass(slots=True)
class Exchange:
    """One question and its answer, to be written; `new_title` is set for a new conversation."""

    conversation_id: str
    collection_id: int
    question: str
    answer: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    new_title: str | None = None


def new_conversation_id() -> str:
    return uuid.uuid4().hex


class ConversationLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = 256) -> None:
        self._sessions = sessions
        self._lookups: MicroBatcher[str, CollectionRef | BaseException] = MicroBatcher(
            self._lookup_many, max_batch=max_batch, max_wait_ms=0
        )
        self._writes: MicroBatcher[Exchange, int] = MicroBatcher(
            self._write_many, max_batch=max_batch, max_wait_ms=0
        )

    @property
    def stats(self) -> dict[str, Any]:
        return {"lookups": self._lookups.stats, "writes": self._writes.stats}

    async def close(self) -> None:
        await self._lookups.close()
        await self._writes.close()

    async def collection(self, name: str) -> CollectionRef:
        """The collection named `name`, read in one query with concurrent callers'; 404 if none."""
        return await self._lookups.submit(name)  # type: ignore[return-value]

    async def record(self, exchange: Exchange) -> int:
        """Writes `exchange` (committed on return); returns its collection's current version."""
        return await self._writes.submit(exchange)

    async def _lookup_many(self, names: list[str]) -> list[CollectionRef | BaseException]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(Collection.id, Collection.name, Collection.version)
                .where(Collection.name.in_(set(names)))
            )
        found = {r.name: CollectionRef(r.id, r.name, r.version) for r in rows}
        return [found.get(n) or NotFound(f"Collection {n!r} does not exist.",
                                         code="collection_not_found") for n in names]

    async def _write_many(self, batch: list[Exchange]) -> Sequence[int | BaseException]:
        try:
            return await self._write(batch)
        except Exception:
            if len(batch) == 1:
                raise
        # Something in the batch was refused (its collection deleted meanwhile, say):
        # write each alone so that only that one fails.
        results: list[int | BaseException] = []
        for one in batch:
            try:
                results.extend(await self._write([one]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _write(self, batch: list[Exchange]) -> list[int]:
        now = utcnow()
        conversations = [
            {"id": e.conversation_id, "collection_id": e.collection_id,
             "title": e.new_title[:200], "created_at": now, "updated_at": now}
            for e in batch if e.new_title is not None
        ]
        messages = []
        for e in batch:
            messages.append({"conversation_id": e.conversation_id, "role": "user",
                             "content": e.question, "citations": [], "created_at": now})
            messages.append({"conversation_id": e.conversation_id, "role": "assistant",
                             "content": e.answer, "citations": e.citations, "created_at": now})
        async with self._sessions() as session, session.begin():
            if conversations:
                await session.execute(insert(Conversation), conversations)
            await session.execute(insert(Message), messages)
            ids = {e.collection_id for e in batch}
            rows = await session.execute(
                select(Collection.id, Collection.version).where(Collection.id.in_(ids))
            )
            versions = {row.id: row.version for row in rows}
        return [versions[e.collection_id] for e in batch]
