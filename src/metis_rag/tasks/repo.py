"""Queries over the task tables. The `tasks` table is the source of truth for every backend."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import String, and_, any_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import Conflict, NotFound
from .ids import public
from .models import Task, TaskBlob, TaskEdge
from .types import FINISHED, QUEUED, Priority, TaskOut

T = Task.__table__
UNFINISHED = ("pending", "scheduled", "waiting", "running")


def one_of(conn: AsyncConnection, column: Any, ids: Sequence[str]) -> Any:
    """`column IN ids`; on PostgreSQL `= ANY(array)`: one parameter, so the statement is not
    re-rendered with one cast per id at every execution (that was 40% of a worker's time)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(String)))
    return column.in_(list(ids))


def to_dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: datetime | None) -> datetime | None: ...
def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def to_out(row: Any) -> TaskOut:
    m = row._mapping if hasattr(row, "_mapping") else row
    data = {k: m[k] for k in TaskOut.model_fields if k not in ("priority", "dependencies")}
    for key in ("start_at", "created_at", "started_at", "finished_at"):
        data[key] = _aware(data[key])
    return TaskOut(priority=Priority(m["priority"]).name, dependencies=list(m["dependencies"] or []),
                   **data)


async def get(conn: AsyncConnection, task_id: str, tenant: str | None = None) -> TaskOut:
    row = (await conn.execute(select(T).where(T.c.id == task_id))).first()
    if row is None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"Task {public(task_id)!r} does not exist.", code="task_not_found")
    return to_out(row)


async def row(conn: AsyncConnection, task_id: str) -> Any:
    return (await conn.execute(select(T).where(T.c.id == task_id))).one()


async def get_many(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, TaskOut]:
    out: dict[str, TaskOut] = {}
    for start in range(0, len(ids), 500):
        rows = await conn.execute(select(T).where(one_of(conn, T.c.id, ids[start : start + 500])))
        out.update((r.id, to_out(r)) for r in rows)
    return out


async def statuses(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, str]:
    ids = list(ids)
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        rows = await conn.execute(select(T.c.id, T.c.status).where(one_of(conn, T.c.id, part)))
        out.update((r[0], r[1]) for r in rows)
    return out


async def list_tasks(
    conn: AsyncConnection, *, status: str | None, type: str | None, limit: int, offset: int,
    tenant: str | None = None,
) -> tuple[list[TaskOut], int]:
    where = [] if tenant is None else [T.c.tenant == tenant]
    if status is not None:
        where.append(T.c.status == status)
    if type is not None:
        where.append(T.c.type == type)
    cond = and_(True, *where)
    rows = await conn.execute(
        select(T).where(cond).order_by(T.c.created_at.desc(), T.c.id.desc()).limit(limit).offset(offset)
    )
    total = (await conn.execute(select(func.count()).select_from(T).where(cond))).scalar_one()
    return [to_out(r) for r in rows], int(total)


async def blob(conn: AsyncConnection, task_id: str) -> bytes | None:
    return (await conn.execute(select(TaskBlob.data).where(TaskBlob.task_id == task_id))).scalar()


async def drop_blobs(conn: AsyncConnection, task_ids: Sequence[str]) -> None:
    await conn.execute(delete(TaskBlob).where(one_of(conn, TaskBlob.task_id, task_ids)))


async def with_dependants(conn: AsyncConnection, task_ids: Sequence[str]) -> set[str]:
    """Which of these tasks some other task depends on."""
    if not task_ids:
        return set()
    rows = await conn.execute(
        select(TaskEdge.depends_on).where(one_of(conn, TaskEdge.depends_on, task_ids)).distinct())
    return {r[0] for r in rows}


async def queue_states(conn: AsyncConnection, task_ids: Sequence[str]) -> list[Any]:
    """(id, status, priority, start_at) of these tasks."""
    return list(await conn.execute(
        select(T.c.id, T.c.status, T.c.priority, T.c.start_at).where(one_of(conn, T.c.id, task_ids))))


async def dependants(conn: AsyncConnection, task_id: str) -> list[str]:
    rows = await conn.execute(select(TaskEdge.task_id).where(TaskEdge.depends_on == task_id))
    return [r[0] for r in rows]


async def dependencies(conn: AsyncConnection, task_ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    rows = await conn.execute(
        select(TaskEdge.task_id, TaskEdge.depends_on).where(one_of(conn, TaskEdge.task_id, task_ids))
    )
    for child, parent in rows:
        out.setdefault(child, []).append(parent)
    return out


async def counts(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(T.c.status, func.count()).group_by(T.c.status))
    return {r[0]: int(r[1]) for r in rows}


async def oldest_created(conn: AsyncConnection, status: str) -> datetime | None:
    """Creation time of the oldest task in `status` (one probe of ix_tasks_status_created)."""
    value: datetime | None = (await conn.execute(
        select(func.min(T.c.created_at)).where(T.c.status == status))).scalar()
    return _aware(value)


async def window_figures(conn: AsyncConnection, since: datetime) -> tuple[int, float | None, float | None]:
    """Tasks finished since `since`, and their mean wait and run times."""
    row = (await conn.execute(
        select(func.count(), func.avg(T.c.wait_s), func.avg(T.c.run_s)).where(T.c.finished_at >= since)
    )).one()
    return int(row[0]), (float(row[1]) if row[1] is not None else None), (
        float(row[2]) if row[2] is not None else None
    )


async def request_cancel(conn: AsyncConnection, task_id: str) -> int:
    result = await conn.execute(
        update(T).where(T.c.id == task_id, T.c.status.in_(UNFINISHED)).values(cancel_requested=True)
    )
    return result.rowcount


async def cancel_queued(conn: AsyncConnection, task_id: str, now: datetime, error: dict[str, str]) -> int:
    """Cancels a task nobody runs yet; 0 when it already started or finished."""
    result = await conn.execute(
        update(T).where(T.c.id == task_id, T.c.status.in_(tuple(QUEUED)))
        .values(status="cancelled", finished_at=now, error=error, cancel_requested=True)
    )
    return result.rowcount


async def reset_for_retry(conn: AsyncConnection, task_id: str, status: str, owner: str | None) -> int:
    result = await conn.execute(
        update(T).where(T.c.id == task_id, T.c.status.in_(("failed", "cancelled"))).values(
            status=status, attempts=0, progress=0.0, message=None, result=None, error=None,
            finished_at=None, started_at=None, run_s=None, wait_s=None, cpu_s=None,
            peak_rss_bytes=None, start_at=None, cancel_requested=False, owner=owner,
        )
    )
    return result.rowcount


async def unfinished(conn: AsyncConnection, task_id: str) -> TaskOut:
    """The task, if it can still be cancelled; 409 `task_finished` otherwise."""
    task = await get(conn, task_id)
    if task.status in FINISHED:
        raise Conflict(f"Task {public(task_id)} has already {task.status}; it cannot be cancelled.",
                       code="task_finished")
    return task


async def requeue(conn: AsyncConnection, task_id: str, owner: str | None) -> TaskOut:
    """Reset a failed or cancelled task for another run (waiting if it has dependencies)."""
    task = await get(conn, task_id)
    if task.status not in ("failed", "cancelled"):
        raise Conflict(f"Only a failed or cancelled task can be retried; task {public(task_id)} is "
                       f"{task.status}.", code="task_not_retryable")
    await reset_for_retry(conn, task_id, "waiting" if task.dependencies else "pending", owner)
    return task


async def cancel_requests(conn: AsyncConnection, owner: str) -> list[str]:
    rows = await conn.execute(
        select(T.c.id).where(T.c.owner == owner, T.c.status.in_(UNFINISHED), T.c.cancel_requested)
    )
    return [r[0] for r in rows]


async def owned_unfinished(conn: AsyncConnection, owner: str) -> list[Any]:
    rows = await conn.execute(
        select(T).where(T.c.owner == owner, T.c.status.in_(UNFINISHED))
        .order_by(T.c.created_at, T.c.id)
    )
    return list(rows)


async def purge_finished(conn: AsyncConnection, before: datetime, tenant: str | None = None) -> int:
    cond = and_(T.c.status.in_(tuple(FINISHED)), T.c.finished_at < before)
    if tenant is not None:
        cond = and_(cond, T.c.tenant == tenant)
    result = await conn.execute(delete(T).where(cond))
    return result.rowcount


# -- claims and the dependency graph, for workers that share the database


async def stuck_waiting(conn: AsyncConnection, limit: int = 1000) -> list[str]:
    """Waiting tasks none of whose dependencies is unfinished (a crash came between the last
    dependency's outcome and freeing them)."""
    open_dep = (
        select(TaskEdge.task_id).join(T, T.c.id == TaskEdge.depends_on)
        .where(T.c.status.in_(UNFINISHED))
    )
    rows = await conn.execute(
        select(T.c.id).where(T.c.status == "waiting", T.c.id.not_in(open_dep)).limit(limit))
    return [r[0] for r in rows]


async def settle_waiting(conn: AsyncConnection, task_ids: Sequence[str], now: datetime) -> list[Any]:
    """Frees or fails waiting tasks by their dependencies' statuses; returns the freed rows."""
    freed: list[Any] = []
    deps = await dependencies(conn, task_ids)
    for task_id in task_ids:
        found = await statuses(conn, deps.get(task_id, []))
        bad = next((d for d in deps.get(task_id, []) if found.get(d, "cancelled") != "completed"), None)
        if bad is not None:
            status = found.get(bad, "missing")
            await conn.execute(update(T).where(T.c.id == task_id, T.c.status == "waiting").values(
                status="failed", finished_at=now, owner=None,
                error={"code": "dependency_failed", "message": f"Dependency {public(bad)} {status}."}))
            freed += await settle_dependants(conn, task_id, "failed", now)
            continue
        row = (await conn.execute(
            update(T).where(T.c.id == task_id, T.c.status == "waiting").values(status="pending")
            .returning(T.c.id, T.c.priority, T.c.start_at))).first()
        if row is not None:
            freed.append(row)
    return freed


async def settle_dependants(
    conn: AsyncConnection, task_id: str, status: str, now: datetime
) -> list[Any]:
    """After `task_id` finished: frees dependants whose dependencies all completed, or fails
    them (transitively) when it did not. Returns the rows freed, to dispatch."""
    freed: list[Any] = []
    stack = [(task_id, status)]
    while stack:
        dep, dep_status = stack.pop()
        for child in await dependants(conn, dep):
            if dep_status != "completed":
                failed = await conn.execute(
                    update(T).where(T.c.id == child, T.c.status == "waiting").values(
                        status="failed", finished_at=now, owner=None,
                        error={"code": "dependency_failed",
                               "message": f"Dependency {public(dep)} {dep_status}."},
                    )
                )
                if failed.rowcount:
                    stack.append((child, "failed"))
                continue
            parents = (await dependencies(conn, [child])).get(child, [])
            found = await statuses(conn, parents)
            if any(found.get(p) != "completed" for p in parents):
                continue
            row = (await conn.execute(
                update(T).where(T.c.id == child, T.c.status == "waiting")
                .values(status="pending").returning(T.c.id, T.c.priority, T.c.start_at)
            )).first()
            if row is not None:
                freed.append(row)
    return freed


async def stale_queued(conn: AsyncConnection, before: datetime, limit: int = 1000) -> list[Any]:
    """Pending tasks older than `before` (their message may be lost), for re-dispatch."""
    rows = await conn.execute(
        select(T.c.id, T.c.priority, T.c.start_at).where(
            T.c.status.in_(("pending", "scheduled")), T.c.created_at < before,
            or_(T.c.start_at.is_(None), T.c.start_at < before),
        ).limit(limit)
    )
    return list(rows)


async def running_count(conn: AsyncConnection) -> int:
    return int((await conn.execute(
        select(func.count()).select_from(T).where(T.c.status == "running"))).scalar_one())
