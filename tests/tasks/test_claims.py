"""Claims of re-delivered messages, on SQLite and on PostgreSQL (the prepared asyncpg statement):
a broker re-delivers a message when its consumer's connection drops, whether the worker died or
not; a task still running on a live worker must not start a second time."""

from __future__ import annotations

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
