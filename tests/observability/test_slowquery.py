"""Slow-query detection on real SQLite and PostgreSQL engines: timed by engine events, logged
with the shape of their parameters (never the values), counted, and shown as alerts."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metis_rag.config import ObservabilitySettings
from metis_rag.observability.metrics import Metrics
from metis_rag.observability.slowquery import operation_of, parameter_shape, watch_queries

from .conftest import serve
from .helpers import scrape, total, value

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SECRET = "hunter2-the-users-question"
SLOW_SQLITE = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) "
               "SELECT count(*) FROM c WHERE x != :secret")


def test_parameter_shapes_never_hold_values() -> None:
    assert parameter_shape((SECRET, 3, b"\x00" * 16, None), False) == {
        "count": 4, "types": ["str", "int", "bytes[16]", "NoneType"]}
    assert parameter_shape({"q": SECRET, "k": 5}, False) == {
        "count": 2, "types": {"q": "str", "k": "int"}}
    assert parameter_shape([(SECRET, 1), (SECRET, 2)], True) == {
        "rows": 2, "count": 2, "types": ["str", "int"]}
    assert SECRET not in repr(parameter_shape([{"a": SECRET}], True))


@pytest.mark.parametrize(("sql", "op"), [
    ("  select 1", "SELECT"), ("INSERT INTO t", "INSERT"), ("with x as (...)", "WITH"),
    ("VACUUM", "OTHER"), ("", "OTHER"),
])
def test_operations_are_a_small_label_set(sql: str, op: str) -> None:
    assert operation_of(sql) == op


def _slow_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "metis.db"]


async def test_postgres_slow_statements_are_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(ObservabilitySettings(slow_query_ms=100))
    engine = create_async_engine(PG_URL)
    remove = watch_queries(engine.sync_engine, metrics, slow_ms=100)
    try:
        with caplog.at_level(logging.WARNING, logger="metis.db"):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.25), :secret"), {"secret": SECRET})
                await conn.execute(text("SELECT 1 WHERE :secret <> ''"), {"secret": SECRET})
    finally:
        remove()
        await engine.dispose()
    m = scrape((await metrics.exposition()).decode())
    assert value(m, "metis_db_slow_queries_total", operation="SELECT") == 1
    assert value(m, "metis_db_query_duration_seconds_count", operation="SELECT")  # >= 2
    records = _slow_records(caplog)
    assert len(records) == 1
    r = records[0]
    assert r.duration_ms >= 250  # type: ignore[attr-defined]
    assert "pg_sleep" in r.statement  # type: ignore[attr-defined]
    assert r.parameters["types"] == ["str"]  # type: ignore[attr-defined]
    assert SECRET not in str(vars(r)) and SECRET not in r.getMessage()


async def test_removed_listeners_stop_timing() -> None:
    metrics = Metrics()
    engine = create_async_engine(PG_URL)
    watch_queries(engine.sync_engine, metrics, slow_ms=100)()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await engine.dispose()
    m = scrape((await metrics.exposition()).decode())
    assert total(m, "metis_db_query_duration_seconds_count") == 0


async def test_failed_statements_keep_timings_paired() -> None:
    metrics = Metrics()
    engine = create_async_engine(PG_URL)
    remove = watch_queries(engine.sync_engine, metrics, slow_ms=100)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception, match="no_such_table"):
                await conn.execute(text("SELECT * FROM no_such_table"))
            await conn.rollback()
            await conn.execute(text("SELECT 1"))
            assert not conn.sync_connection.info.get("metis_query_started")  # type: ignore[union-attr]
    finally:
        remove()
        await engine.dispose()


async def test_sqlite_slow_query_shows_in_summary_and_alerts(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(observability={"slow_query_ms": 50})
    async with serve(settings) as s:
        async with s.services.engine.connect() as conn:
            n = (await conn.execute(text(SLOW_SQLITE), {"n": 2_000_000, "secret": SECRET})).scalar()
        assert n == 2_000_000
        summary = await s.summary()
        m = await s.metrics()
    assert summary["db"]["slow_queries"] == 1
    assert value(m, "metis_db_slow_queries_total", operation="WITH") == 1
    alert = next(a for a in summary["alerts"] if a["logger"] == "metis.db")
    assert alert["level"] == "warning" and alert["event"].startswith("slow query")
    assert alert["fields"]["operation"] == "WITH"
    assert SECRET not in str(summary)
    assert summary["db"]["pool"]["size"] == 8
