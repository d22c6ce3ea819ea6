"""Database engine: SQLite in WAL mode by default, PostgreSQL (asyncpg) when configured."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from ..config import Settings
from ..errors import MissingDependency

T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def is_database_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked" (or "database table is locked"): the busy timeout ran out
    while another connection held the write lock. The statement's transaction is rolled back."""
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(orig, sqlite3.OperationalError) and "is locked" in str(orig)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run while a writer commits; NORMAL sync is durable across a process
    # crash (kill -9), which is what we promise; foreign keys make deletes cascade.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


def _close_abandoned_cursor(ctx: ExceptionContext) -> None:
    """Closes the cursor of a statement abandoned mid-flight, before SQLAlchemy discards its
    connection (a shutdown cancels the task heartbeat and the running tasks wherever they are).

    A cancellation is a "disconnect" to SQLAlchemy: it closes the connection and leaves the
    cursor alone. A statement that returns rows (INSERT ... RETURNING, as every ORM flush and
    chunk insert; any SELECT) has run its first step in aiosqlite's thread but was never read to
    its end, so SQLite keeps it open, and closing the connection only makes it a zombie that
    keeps its transaction and the write lock, until the garbage collector frees the cursor from
    the exception's reference cycles: seconds later, or minutes. Every other writer ran out its
    busy timeout meanwhile (a shutdown's task hand-over: "database is locked"). Closing the
    cursor here resets the statement first; the close is queued on the connection's thread
    before the connection's own close, so a second cancellation cannot reorder them."""
    context = ctx.execution_context
    cursor = getattr(context, "cursor", None)
    if cursor is None or not ctx.is_disconnect:
        return  # SQLAlchemy closes the cursor itself when it keeps the connection
    # Nothing may escape a handle_error hook: it would replace the original exception.
    try:
        cursor.close()
    except (Exception, asyncio.CancelledError):
        pass


def refused(exc: BaseException) -> bool:
    """Whether the database refused a row for good, so that trying it again cannot help: a
    constraint (a key taken meanwhile, a row it refers to deleted) or its data (SQLSTATE class
    22: PostgreSQL holds no NUL in text). Anything else (the database away, a lock) may pass
    next time. asyncpg's data errors reach SQLAlchemy as a plain DBAPIError."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    return isinstance(exc, DBAPIError) and str(
        getattr(exc.orig, "sqlstate", None) or "").startswith("22")


def _json_dumps(value: Any) -> str:
    # JSON columns (citations of every message, task params): orjson is several times faster
    # than the stdlib encoder SQLAlchemy uses by default, and its output reads back the same.
    return orjson.dumps(value).decode()


# RETURNING, UPDATE ... FROM and the JSON functions the stores and the conversation writer use.
MIN_SQLITE = (3, 35, 0)


def check_sqlite_version() -> None:
    """Refuses to start on a SQLite too old for Metis's statements, rather than failing on the
    first upload or answer that needs one."""
    version = sqlite3.sqlite_version_info
    if version < MIN_SQLITE:
        have, need = ".".join(map(str, version)), ".".join(map(str, MIN_SQLITE))
        raise MissingDependency("sqlite3", "", message=(
            f"this Python's SQLite is {have}; Metis needs {need} or newer (2021). Use a Python "
            "built with a newer SQLite, or PostgreSQL (METIS_DATABASE_URL)."))


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        check_sqlite_version()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The busy timeout rides in the URL (pysqlite's `timeout`), so every connection made
        # from it, the synchronous twin's included, waits as long for another writer.
        sqlite_url = make_url(url)
        if "timeout" not in sqlite_url.query:
            sqlite_url = sqlite_url.update_query_dict(
                {"timeout": f"{settings.sqlite_busy_timeout_s:g}"})
        engine = create_async_engine(sqlite_url, pool_size=8, max_overflow=8,
                                     json_serializer=_json_dumps, json_deserializer=orjson.loads)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "handle_error", _close_abandoned_cursor)
        return engine
    if url.startswith("postgresql+asyncpg"):
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:
            raise MissingDependency("asyncpg", "postgres") from exc
    pg = settings.postgres
    return create_async_engine(
        url, pool_size=pg.pool_size, max_overflow=pg.max_overflow, pool_timeout=pg.pool_timeout_s,
        pool_recycle=pg.pool_recycle_s, pool_pre_ping=pg.pool_pre_ping,
        json_serializer=_json_dumps, json_deserializer=orjson.loads,
    )


def sqlite_twin(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file (pysqlite), with the same pragmas and JSON
    encoding, for work done in one thread hop instead of one hop per statement (aiosqlite).
    None for other databases and in-memory SQLite (a second connection would see another
    database)."""
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    twin = create_sync_engine(url.set(drivername="sqlite"), pool_size=1, max_overflow=1,
                              json_serializer=_json_dumps, json_deserializer=orjson.loads,
                              connect_args={"check_same_thread": False})
    event.listen(twin, "connect", _sqlite_pragmas)
    return twin


class TwinWriter:
    """Writes through a SQLite engine's synchronous twin on a thread of its own, one whole
    transaction per hop (the task state writer and the conversation log use it).

    Through aiosqlite every statement, BEGIN and COMMIT is a hop back to the event loop while
    the transaction holds SQLite's write lock; on a saturated loop each hop comes ~100 ms late
    and other writers run out their busy timeout behind it. The thread is the writer's own: a
    write waiting out the busy timeout on the default executor held a thread that another
    connection's transaction was waiting for (the HNSW index's to_thread calls), a deadlock
    until the timeout."""

    def __init__(self, engine: Engine, thread_name: str) -> None:
        self.engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    @classmethod
    def for_engine(cls, engine: AsyncEngine, thread_name: str) -> TwinWriter | None:
        """None where there is no twin (PostgreSQL, in-memory SQLite): write with the pool."""
        twin = sqlite_twin(engine)
        return None if twin is None else cls(twin, thread_name)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in one transaction on the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._in_transaction, work)

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return work(conn)

    def close(self) -> None:
        self.engine.dispose()
        self._thread.shutdown(wait=False)


class Transactions:
    """Runs `work(connection)` as one transaction with synchronous statements: on a SQLite file,
    in one hop to a twin engine's thread of its own (`TwinWriter`); elsewhere (PostgreSQL,
    in-memory SQLite) on a connection of the async engine, the statements in its greenlet.

    Once `run` has handed the work to the thread, cancelling the caller does not stop it: the
    transaction commits or rolls back on its own."""

    def __init__(self, engine: AsyncEngine, thread_name: str) -> None:
        self._engine = engine
        self._twin = TwinWriter.for_engine(engine, thread_name)

    async def run(self, work: Callable[[Connection], T]) -> T:
        if self._twin is not None:
            return await self._twin.run(work)
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    def close(self) -> None:
        if self._twin is not None:
            self._twin.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _upgrade(connection: Connection, pgvector: dict[str, int]) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["pgvector"] = pgvector
    command.upgrade(cfg, "head")


async def migrate(
    engine: AsyncEngine, *, vector_dim: int = 384, hnsw_m: int = 16, hnsw_ef_construction: int = 200
) -> None:
    """Apply every Alembic migration not yet applied (idempotent; run at start-up).

    The vector dimension and HNSW parameters shape the pgvector column and index (PostgreSQL).
    """
    options = {"dim": vector_dim, "m": hnsw_m, "ef_construction": hnsw_ef_construction}
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            # Batch migrations recreate tables; with foreign keys on, dropping the old copy of
            # `collections` would cascade to every document. The pragma only takes effect
            # outside a transaction, so it comes first, and is restored before the connection
            # goes back to the pool.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            try:
                await conn.run_sync(_upgrade, options)
                await conn.commit()
            finally:
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        return
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Servers and task workers start together: one migrates, the others wait for it.
            await conn.execute(text("SELECT pg_advisory_xact_lock(727174)"))
        await conn.run_sync(_upgrade, options)
