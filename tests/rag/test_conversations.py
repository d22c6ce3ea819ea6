"""The conversation log: group commits, read-your-writes, and a refused row dropped alone, on
SQLite (through a synchronous twin's thread) and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from metis_rag.config import Settings
from metis_rag.rag.conversations import ConversationLog
from metis_rag.store import repo
from metis_rag.store.db import create_engine, migrate, session_factory
from metis_rag.store.models import Message
from tests.fakeclock import settle

pytestmark = pytest.mark.databases


@pytest.fixture
async def db(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(Settings(data_dir=tmp_path, database_url=database_url))
    await migrate(engine)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        coll = await repo.get_or_create_collection(session, "default", "c")
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    # Every engine: on SQLite the log writes through a synchronous twin of this one.
    event.listen(Engine, "commit", count)
    yield sessions, coll.id, commits
    event.remove(Engine, "commit", count)
    await engine.dispose()



def statements_seen(log: ConversationLog, sessions: Any, seen: list[tuple[str, bool]],
                    prefix: str) -> None:
    """Appends to `seen` each statement starting with `prefix` that the log's writer sends, and
    whether it was an executemany: on SQLite through a synchronous twin of the engine."""
    engine = log.writer_engine or sessions.kw["bind"].sync_engine
    event.listen(engine, "before_cursor_execute",
                 lambda *a: seen.append((a[2], a[5])) if a[2].startswith(prefix) else None)


class GatedLog(ConversationLog):
    """A conversation log on a slow database: each batch it takes waits for a permit the test
    gives (`allow`); `taken` gets an item as each batch is taken."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: asyncio.Queue[None] = asyncio.Queue()
        self._allowed: asyncio.Queue[None] = asyncio.Queue()

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self._allowed.put_nowait(None)

    async def _write(self, batch):  # type: ignore[no-untyped-def]
        self.taken.put_nowait(None)
        await self._allowed.get()
        await super()._write(batch)


async def gated_log(sessions: Any, coll_id: int) -> tuple[GatedLog, str]:
    """A started `GatedLog` with room for two messages, and one new conversation in it."""
    log = GatedLog(sessions, max_delay_ms=0, max_pending=2)
    await log.start()
    conv = log.new_id()
    log.new_conversation(conv, coll_id, "q")
    return log, conv

async def test_concurrent_turns_share_commits_and_are_read_back(db) -> None:  # type: ignore[no-untyped-def]
    sessions, coll_id, commits = db
    log = ConversationLog(sessions, max_delay_ms=20)
    await log.start()
    # SQLite: a batch is one hop to a thread of its own; PostgreSQL: the pool's connections.
    assert (log.writer_engine is not None) == (sessions.kw["bind"].dialect.name == "sqlite")
    ids = [log.new_id() for _ in range(50)]

    async def turn(conv_id: str) -> None:
        log.new_conversation(conv_id, coll_id, "question")
        await log.append(conv_id, "user", "question", [])
        await log.append(conv_id, "assistant", f"answer of {conv_id}", [{"index": 1}])

    commits.clear()
    await asyncio.gather(*(turn(i) for i in ids))
    history = await log.history(ids[7], 10)  # flushes first: a client reads its own writes
    assert [(m.role, m.content) for m in history] == [
        ("user", "question"), ("assistant", f"answer of {ids[7]}")]
    assert len(commits) <= 2  # 50 conversations and 100 messages, not 150 transactions
    assert await log.collection_of(ids[0], "default") == coll_id
    await log.close()


async def test_close_writes_what_is_queued(db) -> None:  # type: ignore[no-untyped-def]
    sessions, coll_id, _ = db
    log = ConversationLog(sessions, max_delay_ms=60_000)  # the window never ends by itself
    await log.start()
    conv = log.new_id()
    log.new_conversation(conv, coll_id, "q")
    await log.append(conv, "user", "q", [])
    await log.close()
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 1


async def test_a_refused_row_is_dropped_alone(db) -> None:  # type: ignore[no-untyped-def]
    sessions, coll_id, _ = db
    log = ConversationLog(sessions, max_delay_ms=60_000)
    await log.start()
    good = log.new_id()
    log.new_conversation(good, coll_id, "q")
    await log.append(good, "user", "kept", [])
    await log.append("no-such-conversation", "user", "refused by the foreign key", [])
    await log.flush()
    async with sessions() as session:
        rows = (await session.execute(select(Message.content))).scalars().all()
    assert rows == ["kept"]
    await log.close()


async def test_durable_mode_returns_once_the_rows_are_committed(db) -> None:  # type: ignore[no-untyped-def]
    sessions, coll_id, commits = db
    log = ConversationLog(sessions, max_delay_ms=20)
    await log.start()

    async def turn(n: int) -> None:
        conv = log.new_id()
        log.new_conversation(conv, coll_id, "q")
        await log.append(conv, "user", f"q{n}", [])
        await log.committed()
        async with sessions() as session:  # visible to any other connection by now
            assert await session.scalar(select(Message.content).where(
                Message.conversation_id == conv)) == f"q{n}"

    commits.clear()
    await asyncio.gather(*(turn(n) for n in range(20)))
    assert len(commits) <= 2  # still one group commit for the twenty
    await log.close()


async def test_a_conversation_is_stamped_with_its_last_turn_without_an_update(db) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from metis_rag.store.models import Conversation

    sessions, coll_id, _ = db
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]

    def now() -> datetime:
        clock[0] += timedelta(seconds=1)
        return clock[0]

    updates: list[tuple[str, bool]] = []
    log = ConversationLog(sessions, max_delay_ms=60_000, now=now)
    await log.start()
    statements_seen(log, sessions, updates, "UPDATE conversations")
    conv = log.new_id()
    log.new_conversation(conv, coll_id, "q")  # 00:00:01
    await log.append(conv, "user", "q", [])  # 00:00:02
    await log.append(conv, "assistant", "a", [])  # 00:00:03
    await log.flush()
    assert updates == []  # created and touched in one batch: one INSERT carries both

    async def updated_at() -> datetime:
        async with sessions() as session:
            return await session.scalar(select(Conversation.updated_at)
                                        .where(Conversation.id == conv))

    assert await updated_at() == datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    await log.append(conv, "user", "follow-up", [])  # 00:00:04, a later batch
    await log.flush()
    assert len(updates) == 1 and await updated_at() == datetime(2026, 1, 1, 0, 0, 4, tzinfo=UTC)
    await log.close()


async def test_waiting_appends_go_in_first_come_first_served_as_soon_as_a_batch_leaves(db) -> None:  # type: ignore[no-untyped-def]
    """Back-pressure: a full queue makes appends wait; each batch the writer takes lets the
    oldest waiters in, and a newcomer never goes past them. (Waiting for an empty queue let
    newcomers by while a few requests waited seconds: the saturation p99 of cached answers.)"""
    sessions, coll_id, _ = db
    log, conv = await gated_log(sessions, coll_id)
    await log.append(conv, "user", "m0", [])
    await log.append(conv, "user", "m1", [])  # the queue is full
    order: list[str] = []

    async def add(text: str) -> None:
        await log.append(conv, "user", text, [])
        order.append(text)

    waiting = [asyncio.create_task(add(f"w{i}")) for i in range(5)]
    await settle(50)
    # The writer took m0 and m1 (and is stuck writing them): their room went to the two
    # oldest waiters at once, not after the commit.
    assert order == ["w0", "w1"]
    late = asyncio.create_task(add("late"))  # room is short: behind w2..w4, not past them
    await settle(50)
    assert order == ["w0", "w1"]
    log.allow(10)  # the database is fast again
    await asyncio.wait_for(asyncio.gather(*waiting, late), 10)
    assert order == ["w0", "w1", "w2", "w3", "w4", "late"]
    await log.close()
    async with sessions() as session:
        rows = (await session.execute(select(Message.content).order_by(Message.id))).scalars()
        assert list(rows) == ["m0", "m1", "w0", "w1", "w2", "w3", "w4", "late"]


async def test_a_turn_waits_for_room_once_and_goes_in_whole(db) -> None:  # type: ignore[no-untyped-def]
    """A question and its answer wait for room once: two appends waited twice, the answer
    behind every append that had arrived while the question waited."""
    sessions, coll_id, _ = db
    log, conv = await gated_log(sessions, coll_id)
    await log.append(conv, "user", "m0", [])
    await log.append(conv, "assistant", "m1", [])
    await asyncio.wait_for(log.taken.get(), 10)  # m0 and m1, waiting for the database
    await log.append(conv, "user", "m2", [])
    await log.append(conv, "assistant", "m3", [])  # the queue is full
    done: list[str] = []

    async def turn(n: int) -> None:
        await log.append_turn(conv, f"q{n}", f"a{n}", [{"index": n}])
        done.append(f"t{n}")

    async def single() -> None:
        await log.append(conv, "user", "s", [])
        done.append("s")

    tasks = []
    for waiter in (turn(1), single(), turn(2)):
        tasks.append(asyncio.create_task(waiter))
        await settle(5)
    assert done == []
    log.allow()
    await asyncio.wait_for(log.taken.get(), 10)  # the next batch, m2 and m3
    await settle(5)
    # m0 and m1 written, m2 and m3 taken: their room went to the oldest waiter, a whole turn.
    assert done == ["t1"]
    log.allow(10)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert done == ["t1", "s", "t2"]
    await log.close()
    async with sessions() as session:
        rows = (await session.execute(select(Message.role, Message.content, Message.citations)
                                      .order_by(Message.id))).all()
        assert [tuple(r) for r in rows][4:] == [
            ("user", "q1", []), ("assistant", "a1", [{"index": 1}]), ("user", "s", []),
            ("user", "q2", []), ("assistant", "a2", [{"index": 2}])]


async def test_the_fast_write_stores_rows_as_the_orm_would(db) -> None:  # type: ignore[no-untyped-def]
    """One statement per table for the whole batch (SQLite: on the twin's connection, the batch
    as a JSON array read by `json_each`): the stored values (timestamps, JSON text, their types,
    ids) and the rows read back through the ORM are those of SQLAlchemy's Core insert."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import insert, text

    from metis_rag.store.models import Conversation

    sessions, coll_id, _ = db
    sqlite = sessions.kw["bind"].dialect.name == "sqlite"
    paris = timezone(timedelta(hours=1))
    stamps = iter([datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=paris),
                   datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC),
                   datetime(2026, 3, 1, 12, 0, 2, 7, tzinfo=paris)])
    citations = [{"index": 1, "title": "Été « naïf » \u2028", "score": 0.125, "page": None},
                 {"index": 2, "tags": ["a", "b"], "big": 2**53}]
    log = ConversationLog(sessions, max_delay_ms=60_000, now=lambda: next(stamps))
    await log.start()
    statements: list[tuple[str, bool]] = []
    statements_seen(log, sessions, statements, "INSERT")
    fast = log.new_id()
    log.new_conversation(fast, coll_id, "a title " * 40)  # cut at 200 characters
    await log.append(fast, "user", "question ✓", [])
    await log.append(fast, "assistant", "answer", citations)
    await log.flush()
    await log.close()
    # Two statements for the batch: on SQLite each one step over the whole batch (no
    # executemany); on PostgreSQL SQLAlchemy's "insertmanyvalues" (one INSERT of many rows).
    assert [(sql.split(" (")[0], "json_each(?)" in sql and not many if sqlite else True)
            for sql, many in statements] == [("INSERT INTO conversations", True),
                                             ("INSERT INTO messages", True)]

    # The same rows, the way they used to be written: Core inserts of dicts.
    old = "0" * 32
    stamps = iter([datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=paris),
                   datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC),
                   datetime(2026, 3, 1, 12, 0, 2, 7, tzinfo=paris)])
    created, first, last = next(stamps), next(stamps), next(stamps)
    async with sessions() as session, session.begin():
        await session.execute(insert(Conversation.__table__), [
            {"id": old, "collection_id": coll_id, "tenant": "default",
             "title": ("a title " * 40)[:200], "created_at": created, "updated_at": last}])
        await session.execute(insert(Message.__table__), [
            {"conversation_id": old, "role": "user", "content": "question ✓", "citations": [],
             "created_at": first},
            {"conversation_id": old, "role": "assistant", "content": "answer",
             "citations": citations, "created_at": last}])

    async with sessions() as session:
        def stored(sql: str, conv: str) -> Any:
            return session.execute(text(sql), {"c": conv})

        typeof = "typeof" if sqlite else "pg_typeof"
        for sql in ("SELECT collection_id, tenant, title, created_at, updated_at, "
                    f"{typeof}(created_at) FROM conversations WHERE id = :c",
                    f"SELECT role, content, CAST(citations AS TEXT), created_at, {typeof}(citations), "
                    f"{typeof}(id) FROM messages WHERE conversation_id = :c ORDER BY id"):
            assert (await stored(sql, fast)).all() == (await stored(sql, old)).all()
        convs = {c.id: c for c in (await session.execute(select(Conversation))).scalars()}
        assert ((convs[fast].title, convs[fast].created_at, convs[fast].updated_at)
                == (convs[old].title, convs[old].created_at, convs[old].updated_at))
        assert convs[fast].updated_at == datetime(2026, 3, 1, 11, 0, 2, 7, tzinfo=UTC)
        messages = (await session.execute(select(Message).order_by(Message.id))).scalars().all()
        by_conv = {m.conversation_id: [] for m in messages}  # type: ignore[var-annotated]
        for m in messages:
            by_conv[m.conversation_id].append((m.role, m.content, m.citations, m.created_at))
        assert by_conv[fast] == by_conv[old]
        assert by_conv[fast][1][2] == citations
        ids = [m.id for m in messages]
        assert ids == sorted(ids) and len(set(ids)) == 4


async def test_a_nul_character_is_stored_whole_or_its_row_dropped_alone(db) -> None:  # type: ignore[no-untyped-def]
    """SQLite's JSON functions end a string at an escaped NUL: a batch that holds one is written
    row by row, and every text reads back whole. PostgreSQL refuses a NUL in text (the API
    answers 422 before one gets here): that row is dropped alone, the others are written and
    the log goes on."""
    from metis_rag.store.models import Conversation

    sessions, coll_id, _ = db
    sqlite = sessions.kw["bind"].dialect.name == "sqlite"
    log = ConversationLog(sessions, max_delay_ms=60_000)
    await log.start()
    conv, other = log.new_id(), log.new_id()
    log.new_conversation(conv, coll_id, "a\x00title" if sqlite else "title")
    await log.append(conv, "user", "before\x00after", [{"title": "x\x00y"}])
    await log.append(conv, "assistant", "plain", [])
    await log.flush()
    log.new_conversation(other, coll_id, "later")  # the log is not stuck on the refused row
    await log.append(other, "user", "next", [])
    await log.close()
    async with sessions() as session:
        titles = (await session.execute(select(Conversation.title)
                                        .order_by(Conversation.created_at))).scalars().all()
        rows = (await session.execute(select(Message.content, Message.citations)
                                      .order_by(Message.id))).all()
    kept = [("before\x00after", [{"title": "x\x00y"}])] if sqlite else []
    assert titles == ["a\x00title" if sqlite else "title", "later"]
    assert [tuple(r) for r in rows] == [*kept, ("plain", []), ("next", [])]


async def test_a_long_queue_is_written_in_batches_of_max_batch_messages(db) -> None:  # type: ignore[no-untyped-def]
    """Batches are cut at `max_batch` messages, each its own transaction, in queue order, and
    durable waiters return only once the last of the rows queued before them is committed."""
    sessions, coll_id, commits = db
    log = ConversationLog(sessions, max_delay_ms=60_000, max_batch=4)
    await log.start()
    convs = [log.new_id() for _ in range(5)]
    for n, conv in enumerate(convs):
        log.new_conversation(conv, coll_id, "q")
        await log.append(conv, "user", f"q{n}", [])
        await log.append(conv, "assistant", f"a{n}", [])
    commits.clear()
    await log.flush()
    assert len(commits) == 3  # 10 messages: 4, 4 and 2
    async with sessions() as session:
        rows = (await session.execute(select(Message.content).order_by(Message.id))).scalars()
        assert list(rows) == [x for n in range(5) for x in (f"q{n}", f"a{n}")]
    await log.close()
