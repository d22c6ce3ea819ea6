"""Processes that own tasks (embedded engines, Celery workers): heartbeats, death, hand-over.

A process is `host:pid:token`. It is dead when its lease (last heartbeat) ran out, or at once
when it ran on this host and its pid is gone, or is now ours but not one of the engines this
process runs (a restarted container; several app instances in one process are each alive).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import TaskWorker
from .repo import UNFINISHED, T, _aware
from .types import QUEUED

# The ids that this process's running engines and workers heartbeat under: a sibling in the
# same process (two app instances, as in tests and embedded deployments) has our pid and is
# alive. Only the ids of running lifecycles are here (`started` ... `stopped`).
_RUNNING_HERE: set[str] = set()


def started(worker_id: str) -> None:
    """Marks `worker_id` as running in this process, before its first heartbeat."""
    _RUNNING_HERE.add(worker_id)


def stopped(worker_id: str) -> None:
    _RUNNING_HERE.discard(worker_id)


def process_id(token: str) -> str:
    """An id for this process that tells a restarted process from its dead predecessor."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{token}"


async def heartbeat(conn: AsyncConnection, worker_id: str, kind: str, now: datetime,
                    **fields: Any) -> None:
    result = await conn.execute(
        update(TaskWorker).where(TaskWorker.id == worker_id).values(heartbeat_at=now, **fields)
    )
    if result.rowcount == 0:
        host, pid, _ = worker_id.rsplit(":", 2)
        values = {"concurrency": 0, "running": 0, "resources": {}, "alerts": [], **fields}
        await conn.execute(TaskWorker.__table__.insert().values(
            id=worker_id, kind=kind, hostname=host, pid=int(pid), started_at=now, heartbeat_at=now,
            **values,
        ))


async def forget_worker(conn: AsyncConnection, worker_id: str) -> None:
    await conn.execute(delete(TaskWorker).where(TaskWorker.id == worker_id))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def dead_workers(conn: AsyncConnection, me: str, now: datetime, lease_s: float) -> list[str]:
    """Processes whose lease ran out, or that ran on this host and no longer exist.

    Our own pid names a live process only under the ids this process runs: any other id
    with it is a predecessor whose pid we inherited.
    """
    host = socket.gethostname()[:60]
    stale = now - timedelta(seconds=lease_s)
    rows = await conn.execute(select(TaskWorker.id, TaskWorker.hostname, TaskWorker.pid,
                                     TaskWorker.heartbeat_at))
    dead = []
    for wid, whost, pid, beat in rows:
        if wid == me:
            continue
        if beat is not None and _aware(beat) < stale:
            dead.append(wid)
        elif whost == host and (wid not in _RUNNING_HERE if pid == os.getpid()
                                else not _pid_alive(pid)):
            dead.append(wid)  # same host: a pid that is gone (or is us now) is a dead process
    return dead


async def alive(conn: AsyncConnection, me: str, now: datetime, lease_s: float) -> list[str]:
    """The processes that may still be running what they own (`dead_workers`' complement): a
    re-delivered message takes no task from them."""
    dead = set(await dead_workers(conn, me, now, lease_s))
    return [w for w in (await conn.execute(select(TaskWorker.id))).scalars() if w not in dead]


async def live_workers(conn: AsyncConnection, now: datetime, lease_s: float) -> list[dict[str, Any]]:
    stale = now - timedelta(seconds=lease_s)
    rows = await conn.execute(select(TaskWorker).where(TaskWorker.heartbeat_at >= stale))
    out = []
    for r in rows:
        m = dict(r._mapping)
        for key in ("started_at", "heartbeat_at"):
            m[key] = _aware(m[key])
        out.append(m)
    return out


async def adopt(conn: AsyncConnection, me: str, dead: Sequence[str]) -> int:
    """Takes over the unfinished tasks of dead processes and unowned ones; running ones re-queue."""
    owner_cond = or_(T.c.owner.is_(None), T.c.owner.in_(list(dead))) if dead else T.c.owner.is_(None)
    moved = await conn.execute(
        update(T).where(owner_cond, T.c.status == "running").values(status="pending", owner=me)
    )
    queued = await conn.execute(
        update(T).where(owner_cond, T.c.status.in_(tuple(QUEUED))).values(owner=me)
    )
    if dead:
        await conn.execute(delete(TaskWorker).where(TaskWorker.id.in_(list(dead))))
    return moved.rowcount + queued.rowcount


async def release(conn: AsyncConnection, owner: str) -> None:
    """On a clean shutdown: hand this process's unfinished tasks to whoever starts next."""
    await conn.execute(
        update(T).where(T.c.owner == owner, T.c.status == "running").values(status="pending")
    )
    await conn.execute(
        update(T).where(T.c.owner == owner, T.c.status.in_(UNFINISHED)).values(owner=None)
    )


async def requeue_running(conn: AsyncConnection, owners: Sequence[str]) -> list[Any]:
    """Running tasks of dead owners go back to pending; returns them, to dispatch."""
    if not owners:
        return []
    rows = await conn.execute(
        update(T).where(T.c.owner.in_(list(owners)), T.c.status == "running")
        .values(status="pending", owner=None).returning(T.c.id, T.c.priority, T.c.start_at)
    )
    freed = list(rows)
    await conn.execute(delete(TaskWorker).where(TaskWorker.id.in_(list(owners))))
    return freed
