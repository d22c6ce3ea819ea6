"""How a worker that shares the database takes tasks and records their outcomes: the two
statements on every task's path (claim, finish), sent to asyncpg as prepared statements on
PostgreSQL and built with SQLAlchemy elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .repo import T, one_of, with_dependants


async def claim(
    conn: AsyncConnection, task_ids: Sequence[str], owner: str, now: datetime, *,
    takeover: bool = False, live: Sequence[str] = (),
) -> list[Any]:
    """Marks queued tasks running for `owner`; returns the rows claimed (not those finished,
    cancelled, not yet due, or running elsewhere). `takeover`: the broker re-delivered these
    messages, so tasks left running by an owner that is not `live` may be taken (a broker also
    re-delivers when a live worker's connection blips: its task is not run twice). `owner` is
    always counted live."""
    if not task_ids:
        return []
    alive = sorted({owner, *live})
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "asyncpg":
        # The one statement on every task's path to its start: sent to asyncpg as it is (a
        # prepared statement, reused), without building, compiling and processing it again.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        args = (list(task_ids), owner, now, *([alive] if takeover else []))
        records = await raw.fetch(_PG_CLAIM[takeover], *args)
        return [Claimed(*record) for record in records]
    runnable: ColumnElement[bool] = T.c.status.in_(("pending", "scheduled"))
    if takeover:
        runnable = or_(runnable, and_(T.c.status == "running", T.c.owner.not_in(alive)))
    stmt = (
        update(T)
        .where(one_of(conn, T.c.id, task_ids), runnable,
               or_(T.c.start_at.is_(None), T.c.start_at <= now))
        .values(status="running", owner=owner, attempts=T.c.attempts + 1, started_at=now)
        .returning(*CLAIMED)
    )
    return list(await conn.execute(stmt))


class Claimed(NamedTuple):
    """What a worker needs of a task it claimed, to run it and to record its outcome (not its
    result, error, message or dependencies: fewer JSON columns decoded per claim)."""

    id: str
    type: str
    params: dict[str, Any]
    priority: int
    attempts: int
    max_retries: int
    timeout_s: float
    start_at: datetime | None
    created_at: datetime
    started_at: datetime | None


CLAIMED = tuple(T.c[name] for name in Claimed._fields)
# The rows are found by their primary key only: the status test is wrapped in `IS TRUE`, which
# no index matches. Written plainly, PostgreSQL's planner took the status index whenever its
# statistics (from before a burst of submissions) said few tasks were pending, and read every
# pending task's entry and row to claim one or two: 2.3 ms a claim with 2,000 pending, and
# growing with the queue, against 0.17 ms by key (EXPLAIN ANALYZE, README: Background tasks).
_PG_CLAIM = {
    takeover: f"""UPDATE tasks SET status = 'running', owner = $2, attempts = attempts + 1,
        started_at = $3
    WHERE id = ANY($1::varchar[]) AND (start_at IS NULL OR start_at <= $3) AND ({
        "status IN ('pending', 'scheduled') OR (status = 'running' AND owner <> ALL($4))"
        if takeover else "status IN ('pending', 'scheduled')"}) IS TRUE
    RETURNING {", ".join(Claimed._fields)}"""
    for takeover in (False, True)
}


async def finish_owned(
    conn: AsyncConnection, owner: str, outcomes: Sequence[dict[str, Any]]
) -> set[str]:
    """Records the outcomes of runs (`id` plus the columns to set); returns the ids recorded that
    other tasks depend on. A task taken over meanwhile (no longer running for `owner`) is left
    to its new owner."""
    if not outcomes:
        return set()
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "asyncpg":
        # One prepared statement for the whole batch, which also says which tasks have
        # dependants: SQLAlchemy's executemany plus a query for them was 30 % of a worker's loop.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        records = await raw.fetch(_PG_FINISH, owner, *_finish_columns(outcomes))
        return {record[0] for record in records if record[1]}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for values in outcomes:
        columns = tuple(sorted(k for k in values if k != "id"))
        # Bind names must differ from column names in an UPDATE ... SET.
        groups.setdefault(columns, []).append(
            {"_id": values["id"], **{"v_" + k: values[k] for k in columns}})
    recorded: list[str] = []
    for columns, rows in groups.items():
        stmt = (update(T).where(T.c.id == bindparam("_id"), T.c.owner == owner,
                                T.c.status == "running")
                .values({c: bindparam("v_" + c) for c in columns}))
        ids = [r["_id"] for r in rows]
        mine = await conn.execute(select(T.c.id).where(
            one_of(conn, T.c.id, ids), T.c.owner == owner, T.c.status == "running"))
        recorded += [r[0] for r in mine]
        await conn.execute(stmt, rows)
    return await with_dependants(conn, recorded)


def _json_or_null(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _finish_columns(outcomes: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The arrays that `_PG_FINISH` unnests; a column a row does not set is NULL (kept)."""
    return [
        [v["id"] for v in outcomes], [v["status"] for v in outcomes],
        [v.get("finished_at") for v in outcomes], [v.get("start_at") for v in outcomes],
        [v.get("progress") for v in outcomes],
        [_json_or_null(v.get("result")) for v in outcomes],
        [_json_or_null(v.get("error")) for v in outcomes],
        [v["run_s"] for v in outcomes], [v["cpu_s"] for v in outcomes],
        [v["peak_rss_bytes"] for v in outcomes], [v["wait_s"] for v in outcomes],
    ]


# A retry ("scheduled") sets its start time and leaves its owner; only a completed run sets a
# result and 100 % progress; the other columns are in every outcome.
_PG_FINISH = """UPDATE tasks AS t SET status = u.status,
    finished_at = COALESCE(u.finished_at, t.finished_at), start_at = COALESCE(u.start_at, t.start_at),
    owner = CASE WHEN u.status = 'scheduled' THEN NULL ELSE t.owner END,
    progress = COALESCE(u.progress, t.progress),
    result = CASE WHEN u.status = 'completed' THEN u.result::json ELSE t.result END,
    error = u.error::json, run_s = u.run_s, cpu_s = u.cpu_s, peak_rss_bytes = u.peak_rss_bytes,
    wait_s = u.wait_s
FROM unnest($2::varchar[], $3::varchar[], $4::timestamptz[], $5::timestamptz[], $6::float8[],
            $7::text[], $8::text[], $9::float8[], $10::float8[], $11::bigint[], $12::float8[])
    AS u(id, status, finished_at, start_at, progress, result, error, run_s, cpu_s,
         peak_rss_bytes, wait_s)
WHERE t.id = u.id AND t.owner = $1 AND t.status = 'running'
RETURNING t.id, EXISTS (SELECT 1 FROM task_edges AS e WHERE e.depends_on = t.id)"""
