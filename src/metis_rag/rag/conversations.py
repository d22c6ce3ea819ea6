"""`ConversationLog`: conversations and their messages, written behind the answers in groups.

Writing two rows per question in its own transaction would cost more than serving a cached
answer, so messages are queued and committed together by one writer task, at most
`max_delay_ms` after they were queued (group commit). Reads of a conversation (a follow-up's
history, GET /api/conversations/{id}) flush first, so a client always reads its own writes; a
clean shutdown flushes too. A process crash can lose only the messages of the last window,
never documents or chunks, which are committed before their request returns; in durable mode
(`committed`) a request returns only after the group commit that holds its rows. When the
database is unreachable, batches are kept and retried; `append` waits once `max_pending`
messages are queued, so memory stays bounded (the queue plus the one batch being written);
a batch takes at most `max_batch` messages, so a full queue frees room every few milliseconds.
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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..aio import wait_at_most
from ..llm.base import ChatMessage
from ..store import repo
from ..store.db import TwinWriter, refused
from ..store.models import Conversation, Message, utcnow

log = logging.getLogger("metis.conversations")

# Queued rows are tuples in these column orders: at saturation thousands are queued, and each
# dict was one more object for every full garbage collection to walk.
CONVERSATION_COLUMNS = ("id", "collection_id", "tenant", "title", "created_at", "updated_at")
MESSAGE_COLUMNS = ("conversation_id", "role", "content", "citations", "created_at")


@dataclass(frozen=True, slots=True)
class _SqliteStep:
    """One statement of a batch on SQLite, in two forms: the whole batch as one JSON array
    parameter read by `json_each` (one step: pysqlite releases the GIL once per batch, not once
    per row, and the writer thread had to win it back from a saturated event loop every time),
    and per row (executemany) for the rows JSON cannot carry."""

    per_row: str
    from_json: str

    @classmethod
    def insert(cls, table: str, columns: tuple[str, ...]) -> _SqliteStep:
        names = ", ".join(columns)
        # ORDER BY key: messages get their ids in queue order, which reading them back relies on.
        # json_extract, not `->>`: that operator needs SQLite 3.38 (2022); JSON1 is older.
        values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
        return cls(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})",
                   f"INSERT INTO {table} ({names}) SELECT {values} FROM json_each(?) ORDER BY key")

    def execute(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        payload: bytes | None
        try:
            payload = orjson.dumps(rows)
        except orjson.JSONEncodeError:  # a lone surrogate: the driver refuses it, as it did
            payload = None
        # SQLite's JSON functions end a string at an escaped NUL (`\u0000`): such a batch goes
        # row by row. (An escaped backslash before "u0000" matches too; it only costs speed.)
        if payload is None or b"\\u0000" in payload:
            conn.exec_driver_sql(self.per_row, rows)
        else:
            conn.exec_driver_sql(self.from_json, (payload.decode(),))


_INSERT_CONVERSATIONS = _SqliteStep.insert("conversations", CONVERSATION_COLUMNS)
_INSERT_MESSAGES = _SqliteStep.insert("messages", MESSAGE_COLUMNS)
_TOUCH = _SqliteStep("UPDATE conversations SET updated_at = ? WHERE id = ?",
                     "UPDATE conversations SET updated_at = json_extract(t.value, '$[0]') "
                     "FROM json_each(?) AS t WHERE conversations.id = json_extract(t.value, '$[1]')")


@dataclass(slots=True)
class _Pending:
    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    messages: list[tuple[Any, ...]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class ConversationLog:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_delay_ms: float = 5.0,
        max_pending: int = 10_000,
        max_batch: int = 2_000,
        retry_s: float = 1.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._max_delay_s = max_delay_ms / 1000
        self._max_pending = max_pending
        # Messages per transaction: a full queue frees room batch by batch, every ~10 ms, not
        # once per 15,000-row transaction (1.5 s, the wait of the answers that found it full).
        self._max_batch = max(1, max_batch)
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
        # Back-pressure: appends waiting for room (and how many messages each brings), in
        # arrival order, and the room already promised to woken ones that have not run yet (no
        # newcomer may take it).
        self._room_waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._promised = 0
        # On SQLite, a batch is one hop to a thread that writes it through a synchronous twin
        # of the engine with raw executemany; made in start(), closed in close().
        self._direct: TwinWriter | None = None
        self._bind: dict[str, Callable[[Any], Any]] = {}

    @property
    def writer_engine(self) -> Engine | None:
        """The synchronous engine batches are written with on SQLite (None: the pool's)."""
        return None if self._direct is None else self._direct.engine

    async def start(self) -> None:
        bind = self._sessions.kw.get("bind")
        if self._direct is None and isinstance(bind, AsyncEngine):
            self._direct = TwinWriter.for_engine(bind, "metis-conversations")
            if self._direct is not None:
                self._bind = _bind_processors(self._direct.engine)
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
            await self._commit_all()  # whatever is left; raises if the database is still down
        finally:
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def new_conversation(self, conv_id: str, collection_id: int, title: str,
                         tenant: str = "default") -> None:
        now = self._now()
        self._pending.conversations.append((conv_id, collection_id, tenant, title[:200],
                                            now, now))
        self._new[conv_id] = (collection_id, tenant)
        self._queued.set()
        self._drained.clear()

    async def append(self, conversation_id: str, role: str, content: str,
                     citations: list[dict[str, Any]]) -> None:
        await self._room_for(1)
        self._pending.messages.append((conversation_id, role, content, citations, self._now()))
        self._queued.set()
        self._drained.clear()

    async def append_turn(self, conversation_id: str, question: str, answer: str,
                          citations: list[dict[str, Any]]) -> None:
        """The user's question and the answer, queued together after one wait for room: a
        second append waited again, behind every append that had arrived meanwhile."""
        await self._room_for(2)
        self._pending.messages += ((conversation_id, "user", question, [], self._now()),
                                   (conversation_id, "assistant", answer, citations, self._now()))
        self._queued.set()
        self._drained.clear()

    async def _room_for(self, messages: int) -> None:
        if not self._room_waiters and (len(self._pending.messages) + self._promised
                                       < self._max_pending or self._closing):
            return
        # Back-pressure while the database is slow or down: behind earlier waiters.
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, messages)
        self._room_waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._promised -= messages  # let in, then cancelled: give the room back
                self._let_in()
            else:
                with contextlib.suppress(ValueError):  # unless _let_in dropped it already
                    self._room_waiters.remove(entry)
            raise
        self._promised -= messages

    async def committed(self) -> None:
        """Returns once everything queued so far is committed, at the end of the normal window
        (durable mode: a request waits for its own rows, sharing the commit with others)."""
        if not (self._pending.conversations or self._pending.messages):
            return
        if self._writer is None or self._writer.done():
            await self._commit_all()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pending.waiters.append(waiter)
        await waiter

    async def flush(self) -> None:
        """Returns once everything queued before the call is committed."""
        if self._writer is None or self._writer.done():
            await self._commit_all()
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
        """Wakes waiting appends, oldest first, while there is room (all of them on close).
        A turn's two messages go in together once one place is free, so the queue may hold one
        more than `max_pending` (waiting for two places would never end at `max_pending` 1)."""
        while self._room_waiters and (
                self._closing
                or len(self._pending.messages) + self._promised < self._max_pending):
            waiter, messages = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._promised += messages

    async def _run(self) -> None:
        while not self._closing:
            await self._queued.wait()
            if not self._closing:  # let the group gather
                await wait_at_most(self._hurry, self._max_delay_s)
            self._hurry.clear()
            try:
                await self._commit()
            except Exception:
                log.exception("could not write conversation messages; retrying")
                await asyncio.sleep(self._retry_s)

    async def _commit_all(self) -> None:
        await self._commit()
        while self._pending.conversations or self._pending.messages:
            await self._commit()

    async def _commit(self) -> None:
        async with self._write_lock:
            self._queued.clear()
            batch, self._pending = self._take()
            self._let_in()  # the batch left the queue: its room is free for waiting appends
            if not (batch.conversations or batch.messages):
                self._drained.set()
                return
            try:
                try:
                    await self._write(batch)
                except DBAPIError as exc:
                    # A row the database will never take (its conversation's collection was
                    # deleted meanwhile; a NUL in the model's answer on PostgreSQL): row by row,
                    # that one dropped. Anything else keeps the batch for the next try.
                    if not refused(exc):
                        raise
                    await self._write_one_by_one(batch)
            except BaseException:
                # Put the batch back in front of what arrived meanwhile, in order.
                batch.conversations += self._pending.conversations
                batch.messages += self._pending.messages
                batch.waiters += self._pending.waiters
                self._pending = batch
                self._queued.set()
                raise
            for conv in batch.conversations:
                self._new.pop(conv[0], None)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if not (self._pending.conversations or self._pending.messages):
                self._drained.set()

    def _take(self) -> tuple[_Pending, _Pending]:
        """The next batch and what stays queued: at most `max_batch` messages, with every
        conversation queued so far (a message's conversation is queued before it, so no message
        goes before its conversation). Durable waiters stay with the last rows queued."""
        pending = self._pending
        if len(pending.messages) <= self._max_batch:
            return pending, _Pending()
        self._queued.set()
        self._hurry.set()  # a full batch is left: write it without waiting out the window
        return (_Pending(pending.conversations, pending.messages[:self._max_batch]),
                _Pending(messages=pending.messages[self._max_batch:], waiters=pending.waiters))

    async def _write(self, batch: _Pending) -> None:
        # A conversation created in this batch is inserted with its last touch, not updated
        # after (every cached answer to a new question made one UPDATE more).
        touched = {m[0]: m[4] for m in batch.messages}
        conversations = [(*c[:5], touched.pop(c[0], c[5])) for c in batch.conversations]
        if self._direct is not None:
            await self._direct.run(lambda conn: self._write_sqlite(
                conn, conversations, batch.messages, touched))
            return
        steps: list[tuple[Any, list[dict[str, Any]]]] = []
        if conversations:
            steps.append((insert(Conversation.__table__),
                          [dict(zip(CONVERSATION_COLUMNS, c, strict=True)) for c in conversations]))
        if batch.messages:
            steps.append((insert(Message.__table__),
                          [dict(zip(MESSAGE_COLUMNS, m, strict=True)) for m in batch.messages]))
        if touched:
            table = Conversation.__table__
            touch = (update(table).where(table.c.id == bindparam("conv_id"))
                     .values(updated_at=bindparam("when")))
            steps.append((touch, [{"conv_id": c, "when": w} for c, w in touched.items()]))
        async with self._sessions() as session, session.begin():
            for statement, rows in steps:
                await session.execute(statement, rows)

    def _write_sqlite(self, conn: Connection, conversations: list[tuple[Any, ...]],
                      messages: list[tuple[Any, ...]], touched: dict[str, datetime]) -> None:
        """One statement per table (`_SqliteStep`), values encoded by the columns' own bind
        processors, so the rows are those SQLAlchemy's Core insert wrote: its per-row work
        (1.5 s for a batch of 15,000 rows, holding the GIL) was the pace of the whole log."""
        when, as_json = self._bind["created_at"], self._bind["citations"]
        if conversations:
            _INSERT_CONVERSATIONS.execute(conn, [
                (i, coll, tenant, title, when(created), when(updated))
                for i, coll, tenant, title, created, updated in conversations])
        if messages:
            _INSERT_MESSAGES.execute(conn, [
                (conv, role, content, as_json(citations), when(created))
                for conv, role, content, citations, created in messages])
        if touched:
            _TOUCH.execute(conn, [(when(w), c) for c, w in touched.items()])

    async def _write_one_by_one(self, batch: _Pending) -> None:
        for conv in batch.conversations:
            await self._write_or_drop(_Pending(conversations=[conv]))
        for message in batch.messages:
            await self._write_or_drop(_Pending(messages=[message]))

    async def _write_or_drop(self, single: _Pending) -> None:
        try:
            await self._write(single)
        except DBAPIError as exc:
            if not refused(exc):
                raise
            log.error("dropped a conversation row the database refused: %s", exc.orig)


def _bind_processors(engine: Engine) -> dict[str, Callable[[Any], Any]]:
    """How the engine's dialect encodes a timestamp and the citations (JSON) for the driver."""
    table = Message.__table__
    processors: dict[str, Callable[[Any], Any]] = {}
    for name in ("created_at", "citations"):
        # dialect_impl: a TypeDecorator alone would skip its impl's encoding (SQLite's text).
        process = table.c[name].type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        processors[name] = process if process is not None else _same
    return processors


def _same(value: Any) -> Any:
    return value
