"""`sql_query`: one read-only SELECT on the database of METIS_TOOLS__SQL_URL.

Three fences, each enough on its own for the common attacks:

1. the text: one statement, starting with SELECT or WITH, no comments, none of the words that
   write or change state (INSERT, UPDATE, DELETE, DROP, ATTACH, PRAGMA, INTO, SET...), and
   none of the functions that read files or run other SQL (pg_*, lo_*, *_to_xml, dblink...);
2. the database: SQLite is opened read-only with an authorizer that lets the statement read
   only allow-listed tables; PostgreSQL runs it in a READ ONLY transaction, after EXPLAIN
   has named every relation the plan reads and each was checked against the allow-list;
3. limits: a statement timeout (SQLite's progress handler, PostgreSQL's statement_timeout)
   and at most `sql_max_rows` rows.

Metis's own tables are never readable through the tool when it points at Metis's database,
unless METIS_TOOLS__SQL_ALLOW_METIS_TABLES.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..config import ToolSettings
from ..errors import InvalidInput, MetisError
from ..store.models import Base
from .tools import ToolContext, ToolResult, ToolSpec

MAX_SQL_CHARS = 4000
MAX_CELL_CHARS = 500
MAX_CONTENT_CHARS = 8000

# Statement keywords that write or change state; a column of such a name must be quoted.
_WRITE_WORDS = frozenset("""insert update delete merge upsert drop alter create truncate grant
    revoke attach detach pragma vacuum reindex copy call exec execute into lock set reset
    listen notify load begin commit rollback savepoint prepare deallocate discard
    checkpoint""".split())
_DENIED_FUNCTION = re.compile(
    r"^(pg_|lo_|dblink|set_config|current_setting|query_to|table_to|cursor_to|database_to|"
    r"schema_to|xpath|load_extension|readfile|writefile|edit$|fts3_tokenizer|sqlite_)", re.I)
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--|/\*|;|[A-Za-z_][A-Za-z0-9_$]*|\S""")


class SqlRefused(InvalidInput):
    code = "sql_refused"


def check_statement(sql: str) -> str:
    """The statement without a trailing ';', or SqlRefused saying why it is not allowed."""
    statement = sql.strip()
    if len(statement) > MAX_SQL_CHARS:
        raise SqlRefused(f"The statement is longer than {MAX_SQL_CHARS} characters.")
    statement = statement.removesuffix(";").rstrip()
    tokens = list(_tokens(statement))
    words = [t.lower() for t in tokens if t[0].isalpha() or t[0] == "_"]
    if not words or words[0] not in ("select", "with"):
        raise SqlRefused("Only one SELECT (or WITH ... SELECT) statement is allowed.")
    for i, token in enumerate(tokens):
        if token == ";":
            raise SqlRefused("Only one statement is allowed.")
        if token in ("--", "/*"):
            raise SqlRefused("Comments are not allowed.")
        low = token.lower()
        if low in _WRITE_WORDS:
            raise SqlRefused(f"{token.upper()} is not allowed: the tool only reads.")
        if (i + 1 < len(tokens) and tokens[i + 1] == "(" and (low[0].isalpha() or low[0] == "_")
                and _DENIED_FUNCTION.match(low)):
            raise SqlRefused(f"The function {token} is not allowed.")
    return statement


def _tokens(statement: str) -> Iterator[str]:
    for match in _TOKEN.finditer(statement):
        token = match.group()
        if token[0] == "'":
            continue  # a string literal: its words are data
        if token[0] == '"':
            yield "_quoted_identifier"  # a name, never a keyword
            continue
        yield token


class TablePolicy:
    """Which tables the statement may read."""

    def __init__(self, allowed: Sequence[str], forbidden: set[str]) -> None:
        self.allowed = {t.lower() for t in allowed}
        self.forbidden = {t.lower() for t in forbidden}

    def permits(self, table: str) -> bool:
        name = table.lower().rsplit(".", 1)[-1]
        if name in self.forbidden or name.startswith(("sqlite_", "chunks_fts", "pg_")):
            return False
        return not self.allowed or name in self.allowed or table.lower() in self.allowed


def metis_tables() -> set[str]:
    return set(Base.metadata.tables) | {"alembic_version"}


def same_database(url: str, metis_url: str) -> bool:
    if not url or not metis_url:
        return False
    a, b = make_url(url), make_url(metis_url)
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        return bool(a.database and b.database) and (
            Path(a.database or "").resolve() == Path(b.database or "").resolve())
    return (a.host or "localhost", a.port or 5432, a.database) == (
        b.host or "localhost", b.port or 5432, b.database)


class SqlQuery:
    spec = ToolSpec(
        name="sql_query",
        description="Run one read-only SQL SELECT on the configured database and get the rows "
        "back (at most a few hundred). Only allow-listed tables can be read.",
        parameters={
            "type": "object",
            "properties": {"sql": {"type": "string", "minLength": 1, "maxLength": MAX_SQL_CHARS,
                                   "description": "One SELECT or WITH ... SELECT statement."}},
            "required": ["sql"],
            "additionalProperties": False,
        },
        cache_ttl_s=60.0,
    )

    def __init__(self, settings: ToolSettings, *, metis_url: str) -> None:
        self._settings = settings
        forbidden: set[str] = set()
        if settings.sql_url and not settings.sql_allow_metis_tables and same_database(
                settings.sql_url, metis_url):
            forbidden = metis_tables()
        self.policy = TablePolicy(settings.sql_tables, forbidden)
        self._engine: AsyncEngine | None = None

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        if not self._settings.sql_url:
            return ToolResult("No database is configured for sql_query (METIS_TOOLS__SQL_URL).",
                              error="sql_not_configured")
        statement = check_statement(str(arguments["sql"]))
        url = make_url(self._settings.sql_url)
        if url.get_backend_name() == "sqlite":
            columns, rows, truncated = await asyncio.to_thread(
                self._sqlite, url.database or "", statement)
        else:
            columns, rows, truncated = await self._postgres(statement)
        return _result(columns, rows, truncated)

    def _sqlite(self, database: str, statement: str) -> tuple[list[str], list[tuple[Any, ...]],
                                                               bool]:
        s = self._settings
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
        try:
            conn.set_authorizer(self._authorize)
            deadline = time.monotonic() + s.sql_timeout_s
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                cursor = conn.execute(statement)
                rows = cursor.fetchmany(s.sql_max_rows + 1)
            except sqlite3.DatabaseError as exc:
                raise _sqlite_error(exc) from None
            columns = [d[0] for d in cursor.description or ()]
        finally:
            conn.close()
        return columns, rows[: s.sql_max_rows], len(rows) > s.sql_max_rows

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                   trigger: str | None) -> int:
        if action == sqlite3.SQLITE_READ:
            return sqlite3.SQLITE_OK if arg1 and self.policy.permits(arg1) else sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if arg2 and _DENIED_FUNCTION.match(arg2) else (
                sqlite3.SQLITE_OK)
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    async def _postgres(self, statement: str) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        s = self._settings
        if self._engine is None:
            self._engine = create_async_engine(s.sql_url, pool_size=2, max_overflow=0)
        try:
            async with asyncio.timeout(s.sql_timeout_s + 1), self._engine.connect() as conn:
                await conn.execute(text("SET TRANSACTION READ ONLY"))
                await conn.execute(text(
                    f"SET LOCAL statement_timeout = {int(s.sql_timeout_s * 1000)}"))
                plan = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}")
                        ).scalar_one()
                for relation in _relations(json.loads(plan) if isinstance(plan, str) else plan):
                    if not self.policy.permits(relation):
                        raise SqlRefused(f"The table {relation} may not be read.")
                result = await conn.exec_driver_sql(statement)
                rows = [tuple(r) for r in result.fetchmany(s.sql_max_rows + 1)]
                columns = list(result.keys())
                await conn.rollback()
        except MetisError:
            raise
        except TimeoutError:
            raise InvalidInput("The statement ran out of time.", code="sql_timeout") from None
        except Exception as exc:
            raise _pg_error(exc) from None
        return columns, rows[: s.sql_max_rows], len(rows) > s.sql_max_rows


def _relations(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            schema = plan.get("Schema")
            yield f"{schema}.{plan['Relation Name']}" if schema else plan["Relation Name"]
        for value in plan.values():
            yield from _relations(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _relations(item)


def _sqlite_error(exc: sqlite3.DatabaseError) -> MetisError:
    message = str(exc)
    if "interrupted" in message:
        return InvalidInput("The statement ran out of time.", code="sql_timeout")
    if "not authorized" in message or "prohibited" in message:
        return SqlRefused("The statement reads a table or calls a function that is not allowed.")
    return InvalidInput(f"The database refused the statement: {message[:200]}",
                        code="sql_error")


def _pg_error(exc: Exception) -> MetisError:
    message = str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else type(exc).__name__
    if "statement timeout" in message or "canceling statement" in message:
        return InvalidInput("The statement ran out of time.", code="sql_timeout")
    if "read-only transaction" in message:
        return SqlRefused("The statement tried to write.")
    return InvalidInput(f"The database refused the statement: {message[:200]}",
                        code="sql_error")


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(value)} bytes>"
    return str(value)[:MAX_CELL_CHARS]


def _result(columns: list[str], rows: list[tuple[Any, ...]], truncated: bool) -> ToolResult:
    cells = [[_cell(v) for v in row] for row in rows]
    lines = [" | ".join(columns)] + [" | ".join("" if v is None else str(v) for v in row)
                                     for row in cells]
    content = "\n".join(lines)
    if len(content) > MAX_CONTENT_CHARS:
        content = content[:MAX_CONTENT_CHARS] + "\n..."
    note = f"\n({len(rows)} rows{', more not shown' if truncated else ''})"
    return ToolResult(content + note, data={"columns": columns, "rows": cells,
                                            "truncated": truncated})
