"""Group commit of task state: many submissions and state changes, one transaction.

Submissions wait for their commit (a task is never acknowledged before it is durable); state
changes (started, progress, finished) are written behind, merged per task, in the next batch.
Losing the last few of those in a crash is safe: unfinished tasks are re-queued at start-up
and handlers are idempotent. A batch is cut as soon as the previous one commits, so batches
grow under load by themselves and an idle submission pays one commit. On SQLite a batch is one
hop to a thread of the writer's own (as the conversation log's), so SQLite's write lock is never
held across the event loop's turns. A batch the database refuses for one of its rows is written
again submission by submission, so only that submission fails, not the others that shared it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, insert, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..aio import wait_at_most
from ..errors import Conflict, InvalidInput, MetisError
from ..store.db import Transactions, refused
from .models import Task, TaskBlob, TaskEdge

log = logging.getLogger("metis.tasks")
T = Task.__table__
RETRY_DELAY_S = 0.5
# How long the embedded engine's state changes nobody waits for gather before they are written.
BEHIND_S = 0.05


@dataclass(frozen=True, slots=True)
class _Insert:
    """One caller's submission: its rows, and what the caller waits on."""

    tasks: Sequence[dict[str, Any]]
    edges: Sequence[dict[str, Any]]
    blobs: Sequence[dict[str, Any]]
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Batch:
    inserts: list[_Insert] = field(default_factory=list)
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped_blobs: set[str] = field(default_factory=set)
    flushed: list[asyncio.Future[None]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.inserts or self.updates or self.dropped_blobs or self.flushed)

    def writes(self) -> bool:
        return bool(self.inserts or self.updates or self.dropped_blobs)

    def rows(self, kind: str) -> list[dict[str, Any]]:
        """Every submission's rows of one kind (`tasks`, `edges`, `blobs`), in order."""
        return [row for ins in self.inserts for row in getattr(ins, kind)]


class StateWriter:
    """Writes task rows and state changes in batches; one background flusher per engine."""

    def __init__(self, engine: AsyncEngine, behind_s: float = 0.0) -> None:
        """`behind_s`: how long state changes nobody waits for gather before they are written
        (the embedded engine: BEHIND_S). A Celery worker writes them at once: with 50 ms,
        bench_tasks.py's distributed run read 960-1,010 tasks/s against 1,117-1,289 at once
        (two invocations each, noisy), so the gain is not shown there."""
        self._engine = engine
        self._behind_s = behind_s
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # a submission or a flush is waiting for its commit
        self._flusher: asyncio.Task[None] | None = None
        self._writing = False
        self.batches = 0
        self.errors = 0
        # SQLite: batches go through a synchronous twin of the engine on a thread of their own.
        # Through aiosqlite every statement of a batch, BEGIN and COMMIT included, was a hop back
        # to the event loop while the transaction held the write lock; on a loop saturated with
        # cached questions each hop came late, and the other writers (the conversation log, an
        # ingestion's commit) ran out their busy timeout behind it: "database is locked".
        self._direct: Transactions | None = None

    async def start(self) -> None:
        self._direct = Transactions(self._engine, "metis-task-writer")
        self._flusher = asyncio.create_task(self._run(), name="metis-task-writer")

    async def close(self) -> None:
        if self._flusher is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout=10)
        except (TimeoutError, Exception):  # a dead database: what is lost is re-run at start-up
            log.warning("task state writer closed with unwritten changes")
        self._flusher.cancel()
        await asyncio.gather(self._flusher, return_exceptions=True)
        self._flusher = None
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    async def insert(
        self, tasks: Sequence[dict[str, Any]], edges: Sequence[dict[str, Any]] = (),
        blobs: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Adds task rows (with their edges and blobs); returns once they are committed."""
        if not tasks:
            return  # no commit will ever come for an empty batch: do not wait for one
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.inserts.append(_Insert(tasks, edges, blobs, done))
        self._wake.set()
        self._hurry.set()
        await done

    def update(self, task_id: str, **values: Any) -> None:
        """Queues a state change; later values for the same task and column win."""
        current = self._batch.updates.get(task_id)
        if current is None:
            self._batch.updates[task_id] = values
        else:
            current.update(values)
        self._wake.set()

    def drop_blob(self, task_id: str) -> None:
        self._batch.dropped_blobs.add(task_id)
        self._wake.set()

    async def flush(self) -> None:
        """Returns once everything queued before the call has been written (or has failed)."""
        if self._flusher is None or self._flusher.done():
            return
        if not self._writing and not self._batch.writes():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.flushed.append(done)
        self._wake.set()
        self._hurry.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._behind_s > 0:
                # Only state changes behind: let more of them join this batch (a bulk
                # ingestion's progress made a commit every few ms), unless someone waits.
                await wait_at_most(self._hurry, self._behind_s)
            self._wake.clear()
            self._hurry.clear()
            batch, self._batch = self._batch, _Batch()
            if batch.empty():
                continue
            self._writing = True
            try:
                if batch.writes():
                    try:
                        await self._write(batch)
                    except Exception as exc:
                        if not refused(exc):
                            raise
                        await self._write_apart(batch)
            except Exception as exc:
                self.errors += 1
                log.warning("writing task state failed (%s); retrying", exc)
                self._fail(batch, exc)
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            finally:
                self._writing = False
            self.batches += 1
            for fut in (*(ins.done for ins in batch.inserts), *batch.flushed):
                if not fut.done():
                    fut.set_result(None)

    async def _write_apart(self, batch: _Batch) -> None:
        """The database refused a row of the batch for good (a task id taken by a submission
        checked at the same time, a text it cannot hold): each submission is written alone,
        and only the refused one fails, not every submission that shared its commit. Then the
        state changes, together, else one by one, a refused one dropped with an error."""
        for ins in batch.inserts:
            try:
                await self._write(_Batch(inserts=[ins]))
            except Exception as exc:
                if not refused(exc):
                    raise  # the database is away: `_fail` fails this one and those after it
                if not ins.done.done():  # its caller may have gone (cancelled) meanwhile
                    ins.done.set_exception(_refusal(exc))
            else:
                if not ins.done.done():  # committed: whatever fails next is not its failure
                    ins.done.set_result(None)
        await self._changes_apart(batch)

    async def _changes_apart(self, batch: _Batch) -> None:
        changes = _Batch(updates=batch.updates, dropped_blobs=batch.dropped_blobs)
        if not changes.writes():
            return
        try:
            await self._write(changes)
            return
        except Exception as exc:
            if not refused(exc):
                raise
        for task_id, values in batch.updates.items():
            try:
                await self._write(_Batch(updates={task_id: values}))
            except Exception as exc:
                if not refused(exc):
                    raise
                log.error("dropped a state change of task %s the database refused: %s",
                          task_id, exc)
        if batch.dropped_blobs:
            await self._write(_Batch(dropped_blobs=batch.dropped_blobs))

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        # Submissions fail (their caller answers 503); state changes are kept for the next try.
        # (Those `_write_apart` committed before the failure are done already, and kept.)
        failed = [ins for ins in batch.inserts if not ins.done.done() or ins.done.cancelled()
                  or ins.done.exception() is not None]
        for ins in failed:
            if not ins.done.done():
                ins.done.set_exception(exc)
        for fut in batch.flushed:
            if not fut.done():
                fut.set_result(None)
        failed_ids = {row["id"] for ins in failed for row in ins.tasks}
        for task_id, values in batch.updates.items():
            if task_id in failed_ids:
                continue
            newer = self._batch.updates.get(task_id)
            self._batch.updates[task_id] = {**values, **(newer or {})}
        self._batch.dropped_blobs |= batch.dropped_blobs
        self._wake.set()

    async def _write(self, batch: _Batch) -> None:
        steps = _steps(batch)
        # State changes only: losing the last instants of them in a PostgreSQL crash re-runs
        # those tasks, so they need not wait for the WAL flush. Submissions do.
        lazy = not batch.inserts

        def work(conn: Connection) -> None:
            if lazy and conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit TO off"))
            for statement, rows in steps:
                conn.execute(statement, rows)

        assert self._direct is not None, "StateWriter.start() was not called"
        await self._direct.run(work)


def _refusal(exc: BaseException) -> MetisError:
    """What the caller of a submission the database refused is told."""
    if isinstance(exc, IntegrityError):  # a submission checked at the same time took its id
        return Conflict("A task of this submission was stored by another one meanwhile (its id "
                        "is taken), or a task it depends on was deleted.", code="task_exists")
    return InvalidInput("The database cannot store this submission's text (a NUL character?).")


@functools.lru_cache(maxsize=256)
def _update_of(columns: tuple[str, ...]) -> Any:
    """The UPDATE of these columns, built once per set of columns (a handful exist: started,
    progress, finished...); building it cost more than running it."""
    return update(T).where(T.c.id == bindparam("_id")).values(
        {c: bindparam("v_" + c) for c in columns})


def _steps(batch: _Batch) -> list[tuple[Any, list[dict[str, Any]] | None]]:
    """The statements of a batch, in order, each with its rows (None: no parameters)."""
    steps: list[tuple[Any, list[dict[str, Any]] | None]] = []
    for kind, table in (("tasks", T), ("edges", TaskEdge.__table__),
                        ("blobs", TaskBlob.__table__)):
        rows = batch.rows(kind)
        if rows:
            steps.append((insert(table), rows))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for task_id, values in batch.updates.items():
        # Bind names must differ from column names in an UPDATE ... SET.
        row = {"_id": task_id, **{"v_" + k: v for k, v in values.items()}}
        groups.setdefault(tuple(sorted(values)), []).append(row)
    for columns, rows in groups.items():
        steps.append((_update_of(columns), rows))
    if batch.dropped_blobs:
        steps.append((delete(TaskBlob.__table__).where(
            TaskBlob.task_id.in_(list(batch.dropped_blobs))), None))
    return steps

