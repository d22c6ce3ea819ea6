"""Claims of re-delivered messages, on SQLite and on PostgreSQL (the prepared asyncpg statement):
a broker re-delivers a message when its consumer's connection drops, whether the worker died or
not; a task still running on a live worker must not start a second time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from metis_rag.config import Settings
from metis_rag.store.db import create_engine, migrate
from metis_rag.tasks import claims, leases, repo
from tests.tasks.conftest import clean

LEASE_S = 30.0
HOST = socket.gethostname()[:60]


@pytest.fixture
async def engine(tmp_path: Path, database_url: str) -> AsyncIterator[Any]:
    engine = create_engine(Settings(data_dir=tmp_path, database_url=database_url))
    await migrate(engine)
    await clean(engine)
    try:
        yield engine
    finally:
        await clean(engine)
        await engine.dispose()


def gone_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.databases
async def test_a_redelivered_message_takes_only_a_dead_owners_task(engine: Any) -> None:
    now = time.time()
    owners = {
        "live-elsewhere": "otherhost:4242:aaaa",  # another host, heartbeat fresh
        "stale-elsewhere": "otherhost:4343:bbbb",  # another host, lease ran out
        "gone-here": f"{HOST}:{gone_pid()}:cccc",  # this host, its pid is gone
        "mine": f"{HOST}:99999:me",  # the claiming worker itself
    }
    async with engine.begin() as conn:
        for task_id, owner in owners.items():
            beat = now - (LEASE_S * 3 if task_id == "stale-elsewhere" else 1)
            if task_id != "mine":
                await leases.heartbeat(conn, owner, "celery", repo.to_dt(beat))
            await conn.execute(repo.T.insert().values(
                id=task_id, name="x", type="noop", params={}, priority=1, status="running",
                dependencies=[], timeout_s=60, max_retries=3, attempts=1, progress=0.0,
                owner=owner, cancel_requested=False, created_at=repo.to_dt(now)))
        me = owners["mine"]
        live = await leases.alive(conn, me, repo.to_dt(now), LEASE_S)
        assert set(live) == {owners["live-elsewhere"]}
        claimed = await claims.claim(conn, list(owners), me, repo.to_dt(now), takeover=True,
                                     live=live)
        assert sorted(r.id for r in claimed) == ["gone-here", "stale-elsewhere"]
        assert all(r.attempts == 2 for r in claimed)
        # A first delivery takes no running task at all.
        assert await claims.claim(conn, list(owners), "someone:1:x", repo.to_dt(now)) == []
        states = await repo.statuses(conn, list(owners))
    assert set(states.values()) == {"running"}


def _index_names(plan: Any) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= _index_names(child)
    return found


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)  # the planner's question
@pytest.mark.parametrize("analysed", [300, 0], ids=["few-pending", "empty"])
async def test_a_claim_finds_its_tasks_by_key_whatever_the_statistics(
    engine: Any, analysed: int
) -> None:
    """Statistics from before a burst say almost nothing is pending (`analysed` completed tasks,
    or an empty table); the claim must still read its few tasks by primary key, not every
    pending task's entry (2.3 ms a claim at 2,000 pending, growing with the queue) nor the whole
    table. Run as the worker runs it: on its held connection, as the prepared statement's
    generic plan."""
    from sqlalchemy import text

    from metis_rag.tasks.worker import HeldConnection

    now = repo.to_dt(time.time())

    def rows(status: str, n: int) -> list[dict[str, Any]]:
        return [{"id": f"{status}-{i}", "name": "x", "type": "noop", "params": {},
                 "priority": 1, "status": status, "dependencies": [], "timeout_s": 60,
                 "max_retries": 3, "attempts": 0, "progress": 0.0, "cancel_requested": False,
                 "created_at": now} for i in range(n)]

    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE tasks SET (autovacuum_enabled = false)"))
    held = HeldConnection(engine, isolation_level="AUTOCOMMIT")
    try:
        async with engine.begin() as conn:
            if analysed:
                await conn.execute(repo.T.insert(), rows("completed", analysed))
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                text("VACUUM ANALYZE tasks"))
        async with engine.begin() as conn:  # the burst, after the statistics were taken
            await conn.execute(repo.T.insert(), rows("pending", 3000))
        async with held as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.execute("SET plan_cache_mode = force_generic_plan")
            await raw.execute("PREPARE claim_probe(varchar[], varchar, timestamptz) AS "
                              + claims._PG_CLAIM[False])
            try:
                plan = (await raw.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_probe("
                    "ARRAY['pending-7', 'pending-2999']::varchar[], 'me:1:x', now())"))
            finally:
                await raw.execute("DEALLOCATE claim_probe")
                await raw.execute("RESET plan_cache_mode")
        top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        assert top["Actual Rows"] == 2  # both claimed
        assert _index_names(top) == {"tasks_pkey"}, top
    finally:
        await held.close()
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE tasks RESET (autovacuum_enabled)"))
