"""`sql_query` on real SQLite and PostgreSQL databases, with hostile statements."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metis_rag.agent.builtin_sql import SqlQuery, check_statement, same_database
from metis_rag.agent.registry import ToolRegistry
from metis_rag.agent.tools import ToolCall, ToolContext, ToolResult
from metis_rag.config import ToolSettings
from metis_rag.errors import InvalidInput

CTX = ToolContext(tenant="default", collection="docs")

HOSTILE = [
    "DELETE FROM sales",
    "SELECT 1; DROP TABLE sales",
    "SELECT * FROM sales; ",  # fine: a trailing semicolon is allowed (tested below)
    "select * from sales -- and then",
    "SELECT * FROM sales /* */",
    "WITH x AS (DELETE FROM sales RETURNING *) SELECT * FROM x",
    "SELECT * INTO copy_of_sales FROM sales",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "PRAGMA table_info(sales)",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT query_to_xml('select * from secrets', true, true, '')",
    "UPDATE sales SET amount = 0",
    "  ",
    "EXPLAIN SELECT 1",
]


def test_statements_that_write_or_escape_are_refused_by_their_text() -> None:
    for sql in HOSTILE:
        if sql == "SELECT * FROM sales; ":
            assert check_statement(sql) == "SELECT * FROM sales"
            continue
        with pytest.raises(InvalidInput):
            check_statement(sql)
    # Words inside strings and quoted names are data, not keywords.
    assert check_statement("SELECT 'drop; delete -- x' AS note, \"set\" FROM sales")
    assert check_statement("SELECT replace(region, 'a', 'b') FROM sales")


def test_the_database_identity_decides_what_is_metis() -> None:
    assert same_database("sqlite+aiosqlite:////tmp/a/../a/m.db", "sqlite:////tmp/a/m.db")
    assert not same_database("sqlite:////tmp/b.db", "sqlite:////tmp/a.db")
    assert same_database("postgresql+asyncpg://u@h/db", "postgresql://x@h:5432/db")
    assert not same_database("postgresql+asyncpg://u@h/other", "postgresql://u@h/db")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE sales (region TEXT, amount INTEGER);
        CREATE TABLE secrets (token TEXT);
        CREATE TABLE documents (filename TEXT);
        CREATE VIEW leak AS SELECT token FROM secrets;
        INSERT INTO secrets VALUES ('hunter2');
        INSERT INTO documents VALUES ('private.pdf');
    """)
    conn.executemany("INSERT INTO sales VALUES (?, ?)",
                     [("north", 10), ("south", 20), ("north", 5)] * 100)
    conn.commit()
    conn.close()
    return path


def registry_for(url: str, metis_url: str = "sqlite:////nowhere/metis.db",
                 **kw: Any) -> ToolRegistry:
    settings = ToolSettings(sql_url=url, **kw)
    return ToolRegistry([SqlQuery(settings, metis_url=metis_url)], cache=None)


async def ask(reg: ToolRegistry, sql: str) -> ToolResult:
    return await reg.call(ToolCall("sql_query", {"sql": sql}), CTX)


async def test_sqlite_reads_allow_listed_tables_with_a_row_limit(sqlite_db: Path) -> None:
    reg = registry_for(f"sqlite+aiosqlite:///{sqlite_db}", sql_tables=["sales"], sql_max_rows=5)
    result = await ask(reg, "SELECT region, SUM(amount) AS total FROM sales GROUP BY region "
                            "ORDER BY region")
    assert result.error is None
    assert result.data["rows"] == [["north", 1500], ["south", 2000]]
    many = await ask(reg, "SELECT * FROM sales")
    assert len(many.data["rows"]) == 5 and many.data["truncated"]
    cte = await ask(reg, "WITH n AS (SELECT amount FROM sales WHERE region = 'north') "
                         "SELECT COUNT(*) FROM n")
    assert cte.data["rows"] == [[200]]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM secrets", "SELECT * FROM leak", "SELECT * FROM sqlite_master",
    "SELECT s.region FROM sales s JOIN secrets t ON 1=1",
    "SELECT (SELECT token FROM secrets) FROM sales",
])
async def test_sqlite_refuses_tables_off_the_list_however_they_are_reached(
        sqlite_db: Path, sql: str) -> None:
    reg = registry_for(f"sqlite:///{sqlite_db}", sql_tables=["sales"])
    result = await ask(reg, sql)
    assert result.error in ("sql_refused", "sql_error")
    assert "hunter2" not in result.content


async def test_metis_tables_are_refused_on_metis_database_unless_allowed(sqlite_db: Path) -> None:
    url = f"sqlite:///{sqlite_db}"
    refused = await ask(registry_for(url, metis_url=url), "SELECT * FROM documents")
    assert refused.error == "sql_refused"
    other = await ask(registry_for(url, metis_url=url), "SELECT COUNT(*) FROM sales")
    assert other.data["rows"] == [[300]]
    allowed = registry_for(url, metis_url=url, sql_allow_metis_tables=True)
    assert (await ask(allowed, "SELECT * FROM documents")).data["rows"] == [["private.pdf"]]


async def test_sqlite_statement_timeout(sqlite_db: Path) -> None:
    reg = registry_for(f"sqlite:///{sqlite_db}", sql_timeout_s=0.2)
    result = await ask(reg, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                            "SELECT MAX(x) FROM c")
    assert result.error == "sql_timeout"


async def test_the_database_file_is_never_written(sqlite_db: Path) -> None:
    reg = registry_for(f"sqlite:///{sqlite_db}")
    for sql in HOSTILE:
        await ask(reg, sql)
    conn = sqlite3.connect(sqlite_db)
    assert conn.execute("SELECT COUNT(*) FROM sales").fetchone() == (300,)
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {
        "sales", "secrets", "documents", "leak"}


async def test_without_a_database_the_tool_says_so() -> None:
    reg = ToolRegistry([SqlQuery(ToolSettings(), metis_url="")], cache=None)
    assert (await ask(reg, "SELECT 1")).error == "sql_not_configured"


@pytest.fixture
async def pg_url(pg_server: Any) -> AsyncIterator[str]:
    name = await pg_server.create_database()
    url = pg_server.url(name)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE sales (region text, amount int)"))
        await conn.execute(text("CREATE TABLE secrets (token text)"))
        await conn.execute(text("INSERT INTO secrets VALUES ('hunter2')"))
        await conn.execute(text("CREATE VIEW leak AS SELECT token FROM secrets"))
        await conn.execute(text("INSERT INTO sales SELECT 'north', g FROM generate_series(1, 50) g"))
    await engine.dispose()
    try:
        yield url
    finally:
        await pg_server.drop_database(name)


async def test_postgresql_reads_and_refuses(pg_url: str) -> None:
    tool = SqlQuery(ToolSettings(sql_url=pg_url, sql_tables=["sales"], sql_max_rows=3,
                                 sql_timeout_s=0.5), metis_url="")
    reg = ToolRegistry([tool], cache=None)
    try:
        total = await ask(reg, "SELECT SUM(amount) FROM sales")
        assert total.error is None and total.data["rows"] == [[1275]]
        assert (await ask(reg, "SELECT * FROM sales")).data["truncated"]
        for sql in ["SELECT * FROM secrets", "SELECT * FROM leak",
                    "SELECT * FROM sales WHERE EXISTS (SELECT 1 FROM secrets)",
                    "SELECT * FROM pg_catalog.pg_authid", "SELECT pg_sleep(5)",
                    "WITH x AS (DELETE FROM sales RETURNING *) SELECT * FROM x"]:
            result = await ask(reg, sql)
            assert result.error in ("sql_refused", "sql_error"), sql
            assert "hunter2" not in result.content
        slow = await ask(reg, "SELECT COUNT(*) FROM sales, generate_series(1, 100000000)")
        assert slow.error == "sql_timeout"
        assert (await ask(reg, "SELECT COUNT(*) FROM sales")).data["rows"] == [[50]]
    finally:
        await tool.close()
