"""`ConversationLog`: conversations and their messages, written behind the answers in groups.

Writing two rows per question in its own transaction would cost more than serving a cached
answer, so messages are queued and committed together by one writer task, at most
`max_delay_ms` after they were queued (group commit). Reads of a conversation (a follow-up's
history, GET /api/conversations/{id}) flush first, so a client always reads its own writes; a
clean shutdown flushes too. A process crash can lose only the messages of the last window,
never documents or chunks, which are committed before their request returns; in durable mode
(`committed`) a request returns only after the group commit that holds its rows. When the
database is unreachable, batches are kept and retried; `append` waits once `max_pending`
messages are queued, so memory stays bounded (the queue plus the one batch being written).
Waiting appends are let in first come, first served, as soon as the writer takes a batch:
answers slow down evenly to the writer's pace. (They used to wait until the queue was empty,
which under steady load it never is: a few requests waited seconds, once 7.3 s, while
newcomers went past them; that was the p99 of cached answers at saturation.) A row the database
refuses (its conversation's collection was deleted meanwhile) is logged and dropped alone,
never with its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..llm.base import ChatMessage
from ..store import repo
from ..store.db import sqlite_twin
from ..store.models import Conversation, Message, utcnow

log = logging.getLogger("metis.conversations")


@dataclass(slots=True)
class _Pending:
    conversations: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    touched: dict[str, datetime] = field(default_factory=dict)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class ConversationLog:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_delay_ms: float = 5.0,
        max_pending: int = 10_000,
        retry_s: float = 1.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._max_delay_s = max_delay_ms / 1000
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._now = now
        self._pending = _Pending()
        # conversations not yet committed -> (collection id, tenant)
        self._new: dict[str, tuple[int, str]] = {}
        self._queued = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._hurry = asyncio.Event()  # a flush or close is waiting: end the window now
        self._writer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._closing = False
        # Back-pressure: appends waiting for room, in arrival order, and the room already
        # promised to woken ones that have not run yet (no newcomer may take it).
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._promised = 0
        # On SQLite, batches are written through a synchronous twin of the engine (same file,
        # pragmas and JSON encoding) in one thread hop; made in start(), disposed in close().
        self._direct: Engine | None = None
        # Its own thread: a write waiting out SQLite's busy timeout must not hold one of the
        # default executor's threads, which transactions of other connections may wait for.
        self._thread: ThreadPoolExecutor | None = None

    @property
    def writer_engine(self) -> Engine | None:
        """The synchronous engine batches are written with on SQLite (None: the pool's)."""
        return self._direct

    async def start(self) -> None:
        bind = self._sessions.kw.get("bind")
        if self._direct is None and isinstance(bind, AsyncEngine):
            self._direct = sqlite_twin(bind)
        if self._direct is not None and self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix="metis-conversations")
        if self._writer is None:
            self._closing = False
            self._writer = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        self._let_in()
        if self._writer is not None:
            self._queued.set()
            self._hurry.set()
            await self._writer
            self._writer = None
        try:
            await self._commit()  # whatever is left; raises if the database is still down
        finally:
            if self._direct is not None:
                self._direct.dispose()
                self._direct = None
            if self._thread is not None:
                self._thread.shutdown(wait=False)
                self._thread = None

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def new_conversation(self, conv_id: str, collection_id: int, title: str,
                         tenant: str = "default") -> None:
        now = self._now()
        self._pending.conversations.append({"id": conv_id, "collection_id": collection_id,
                                            "tenant": tenant, "title": title[:200],
                                            "created_at": now, "updated_at": now})
        self._new[conv_id] = (collection_id, tenant)
        self._queued.set()
        self._drained.clear()

    async def append(self, conversation_id: str, role: str, content: str,
                     citations: list[dict[str, Any]]) -> None:
        if self._room_waiters or (len(self._pending.messages) + self._promised
                                  >= self._max_pending and not self._closing):
            # Back-pressure while the database is slow or down: behind earlier waiters.
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._promised -= 1  # let in, then cancelled: give the room back
                    self._let_in()
                else:
                    with contextlib.suppress(ValueError):  # unless _let_in dropped it already
                        self._room_waiters.remove(waiter)
                raise
            self._promised -= 1
        now = self._now()
        self._pending.messages.append({"conversation_id": conversation_id, "role": role,
                                       "content": content, "citations": citations,
                                       "created_at": now})
        self._pending.touched[conversation_id] = now
        self._queued.set()
        self._drained.clear()

    async def committed(self) -> None:
        """Returns once everything queued so far is committed, at the end of the normal window
        (durable mode: a request waits for its own rows, sharing the commit with others)."""
        if not (self._pending.conversations or self._pending.messages):
            return
        if self._writer is None or self._writer.done():
            await self._commit()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pending.waiters.append(waiter)
        await waiter

    async def flush(self) -> None:
        """Returns once everything queued before the call is committed."""
        if self._writer is None or self._writer.done():
            await self._commit()
            return
        self._queued.set()
        self._hurry.set()
        await self._drained.wait()

    async def collection_of(self, conversation_id: str, tenant: str) -> int:
        """The conversation's collection; another tenant's conversation is not found."""
        new = self._new.get(conversation_id)
        if new is not None and new[1] == tenant:
            return new[0]
        async with self._sessions() as session:
            return (await repo.get_conversation(session, tenant, conversation_id)).collection_id

    async def history(self, conversation_id: str, limit: int) -> list[ChatMessage]:
        if limit <= 0:
            return []
        await self.flush()
        async with self._sessions() as session:
            past = await repo.recent_messages(session, conversation_id, limit)
        # Only append() writes messages, with the roles of ChatMessage.
        return [ChatMessage(m.role, m.content) for m in past]  # type: ignore[arg-type]

    def _let_in(self) -> None:
        """Wakes waiting appends, oldest first, while there is room (all of them on close)."""
        while self._room_waiters and (
                self._closing
                or len(self._pending.messages) + self._promised < self._max_pending):
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._promised += 1

    async def _run(self) -> None:
        while not self._closing:
            await self._queued.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):  # let the group gather
                    await asyncio.wait_for(self._hurry.wait(), self._max_delay_s)
            self._hurry.clear()
            try:
                await self._commit()
            except Exception:
                log.exception("could not write conversation messages; retrying")
                await asyncio.sleep(self._retry_s)

    async def _commit(self) -> None:
        async with self._write_lock:
            self._queued.clear()
            batch, self._pending = self._pending, _Pending()
            self._let_in()  # the batch left the queue: its room is free for waiting appends
            if not (batch.conversations or batch.messages):
                self._drained.set()
                return
            try:
                try:
                    await self._write(batch)
                except IntegrityError:
                    await self._write_one_by_one(batch)
            except BaseException:
                # Put the batch back in front of what arrived meanwhile, in order.
                batch.conversations += self._pending.conversations
                batch.messages += self._pending.messages
                batch.touched.update(self._pending.touched)
                batch.waiters += self._pending.waiters
                self._pending = batch
                self._queued.set()
                raise
            for conv in batch.conversations:
                self._new.pop(conv["id"], None)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if not (self._pending.conversations or self._pending.messages):
                self._drained.set()

    async def _write(self, batch: _Pending) -> None:
        touched = batch.touched
        if batch.conversations and touched:
            # A conversation created in this batch is inserted with its last touch, not
            # updated after (every cached answer to a new question made one UPDATE more).
            for conv in batch.conversations:
                conv["updated_at"] = touched.get(conv["id"], conv["updated_at"])
            created = {conv["id"] for conv in batch.conversations}
            touched = {c: w for c, w in touched.items() if c not in created}
        steps: list[tuple[Any, list[dict[str, Any]]]] = []
        # Core inserts on the tables: the ORM's bulk path costs more than the rows.
        if batch.conversations:
            steps.append((insert(Conversation.__table__), batch.conversations))
        if batch.messages:
            steps.append((insert(Message.__table__), batch.messages))
        if touched:
            table = Conversation.__table__
            touch = (update(table).where(table.c.id == bindparam("conv_id"))
                     .values(updated_at=bindparam("when")))
            steps.append((touch, [{"conv_id": c, "when": w} for c, w in touched.items()]))
        if self._direct is not None:
            # The whole transaction in one hop to a thread: through aiosqlite each statement,
            # BEGIN and COMMIT is a hop back to the event loop, which at saturation is ~100 ms
            # late every time (a batch took 0.5-2.9 s, and the queue behind it filled up).
            # A thread of its own: a write waiting out SQLite's busy timeout on the default
            # executor held a thread that another connection's transaction was waiting for
            # (the HNSW index's to_thread calls), a deadlock until the timeout.
            await asyncio.get_running_loop().run_in_executor(
                self._thread, self._write_direct, self._direct, steps)
            return
        async with self._sessions() as session, session.begin():
            for statement, rows in steps:
                await session.execute(statement, rows)

    @staticmethod
    def _write_direct(engine: Engine, steps: list[tuple[Any, list[dict[str, Any]]]]) -> None:
        with engine.begin() as conn:
            for statement, rows in steps:
                conn.execute(statement, rows)

    async def _write_one_by_one(self, batch: _Pending) -> None:
        for conv in batch.conversations:
            await self._write_or_drop(_Pending(conversations=[conv]))
        for message in batch.messages:
            await self._write_or_drop(_Pending(messages=[message]))

    async def _write_or_drop(self, single: _Pending) -> None:
        try:
            await self._write(single)
        except IntegrityError as exc:
            log.error("dropped a conversation row the database refused: %s", exc.orig)
