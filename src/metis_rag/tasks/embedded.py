"""`EmbeddedBackend`: the in-process engine. Scheduler + worker pool on the server's event loop.

Submissions are committed before they are queued (group commit); state changes are written
behind in batches. Each process owns the tasks it queues and renews a lease on them; at
start-up, and at every heartbeat, it adopts the unfinished tasks of dead processes, so after
a kill -9 whatever was running runs again (at-least-once; handlers are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import TaskSettings
from ..errors import ServiceUnavailable
from . import leases, repo
from .base import TaskBackend, Watch
from .ids import public
from .resources import ResourceMonitor, Sampler, psutil_sampler
from .runner import HandlerRegistry, Outcome, TaskContext, execute, retry_delay_s
from .scheduler import Entry, Scheduler
from .types import FINISHED, QUEUED, TaskOut, TaskSpec
from .writer import BEHIND_S, StateWriter

BLOBS_IN_MEMORY = 64 * 1024 * 1024
log = logging.getLogger("metis.tasks")
CANCEL_WAIT_S = 30.0


class EmbeddedBackend(TaskBackend):
    name = "embedded"

    def __init__(
        self, engine: AsyncEngine, settings: TaskSettings, registry: HandlerRegistry,
        *, data_dir: Path = Path("."), run: bool = True, clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, sampler: Sampler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(engine, settings, registry, clock=clock)
        self.worker_id = leases.process_id(uuid.uuid4().hex[:8])
        self.sched = Scheduler()
        self.writer = StateWriter(engine, behind_s=BEHIND_S)
        self.monitor = ResourceMonitor(
            settings, sampler or psutil_sampler(data_dir), maximum=settings.concurrency,
            source=self.worker_id, clock=clock, sleep=sleep, on_change=lambda _: self._pump(),
        )
        self._run_tasks = run
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        # Uploads of tasks whose rows are committing, with that commit.
        self._uncommitted: dict[str, tuple[bytes, asyncio.Future[None]]] = {}
        # Committed uploads of tasks queued here, kept until their task reads them, up to
        # BLOBS_IN_MEMORY bytes in all: reading each back from the database was a connection,
        # a query and the bytes through aiosqlite's thread, per task.
        self._blobs: dict[str, bytes] = {}
        self._blob_bytes = 0
        self._waited_s: dict[str, float] = {}  # queue wait of each running task, for metrics
        self._services: Any = None
        self._metrics: Any = None
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._watches: set[Watch] = set()  # of the waits in progress (see TaskBackend.wait)

    @property
    def limit(self) -> int:
        return self.monitor.limit

    # -- lifecycle

    async def start(self, services: Any = None) -> None:
        self._services = services
        self._metrics = getattr(services, "metrics", None)
        await self.writer.start()
        if not self._run_tasks:
            return
        leases.started(self.worker_id)
        await self._heartbeat()
        await self.monitor.start()
        self._loops.append(asyncio.create_task(self._heartbeats(), name="metis-task-heartbeat"))

    async def close(self) -> None:
        self._closing = True
        for loop in [*self._loops, *([self._timer] if self._timer else [])]:
            loop.cancel()
        await asyncio.gather(*self._loops, *([self._timer] if self._timer else []),
                             return_exceptions=True)
        await self.monitor.close()
        running = list(self._running.values())
        for task in running:
            task.cancel()  # not a user's cancel: the task is handed over, not cancelled
        await asyncio.gather(*running, return_exceptions=True)
        await self.writer.flush()
        if self._run_tasks:
            try:
                async with self.engine.begin() as conn:
                    await leases.release(conn, self.worker_id)
                    await leases.forget_worker(conn, self.worker_id)
            except Exception as exc:  # the next start adopts them once our lease runs out
                log.warning("could not hand over unfinished tasks: %s", exc)
            leases.stopped(self.worker_id)
        await self.writer.close()

    async def sync(self) -> None:
        await self.writer.flush()

    # -- submission

    async def submit(self, specs: Sequence[TaskSpec]) -> list[TaskOut]:
        if self._closing:
            raise ServiceUnavailable("The task engine is shutting down.", code="tasks_closing")
        owner = self.worker_id if self._run_tasks else None
        sub = await self.prepare(specs, owner)
        if not self._run_tasks:
            await self.writer.insert(sub.rows, sub.edges, sub.blobs)
            return [repo.to_out(row) for row in sub.rows]
        # Queue first, answer after the commit: a task may start while its row is committed
        # (its state changes are written after it, in order); an upload's bytes are read from
        # memory until then. If the commit fails the caller gets the error and the tasks stop.
        now = self.clock()
        entries = [_entry(row, sub.blocked_by[row["id"]]) for row in sub.rows
                   if row["status"] not in FINISHED]
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._uncommitted.update((b["task_id"], (b["data"], committed)) for b in sub.blobs)
        for entry in entries:
            self.sched.add(entry, now)
        self._pump()
        self._arm_timer()
        try:
            await self.writer.insert(sub.rows, sub.edges, sub.blobs)
            committed.set_result(None)
            for b in sub.blobs:
                if self._blob_bytes + len(b["data"]) <= BLOBS_IN_MEMORY and (
                        b["task_id"] in self.sched.entries):
                    self._blobs[b["task_id"]] = b["data"]
                    self._blob_bytes += len(b["data"])
        except BaseException:
            committed.cancel()
            for entry in entries:
                entry.cancel_requested = True
                self.sched.remove(entry.id)
                task = self._running.get(entry.id)
                if task is not None:
                    task.cancel()
            raise
        finally:
            for b in sub.blobs:
                self._uncommitted.pop(b["task_id"], None)
        return [repo.to_out(row) for row in sub.rows]

    async def dependency_statuses(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        held = {i: self.sched.entries[i].status for i in ids if i in self.sched.entries}
        rest = [i for i in ids if i not in held]
        return {**held, **(await super().dependency_statuses(rest) if rest else {})}

    # -- dispatch

    def _pump(self) -> None:
        if self._closing or not self._run_tasks:
            return
        while len(self._running) < self.limit:
            entry = self.sched.peek_ready()
            if entry is None or self.sched.held_back(
                    entry, self._running, self.clock(), self.settings.low_priority_max_defer_s):
                return
            self.sched.pop_ready()
            self._start(entry)

    def _start(self, entry: Entry) -> None:
        entry.attempts += 1
        now = self.clock()
        waited_s = self._waited_s[entry.id] = max(0.0, now - entry.ready_since)
        self.writer.update(entry.id, status="running", attempts=entry.attempts,
                           started_at=repo.to_dt(now), wait_s=waited_s, owner=self.worker_id)
        ctx = TaskContext(entry.id, entry.type, entry.params, entry.attempts, self._services,
                          self._progress, self._blob)
        task = asyncio.create_task(execute(self.registry, ctx, entry.timeout_s),
                                   name=f"metis-task-{entry.id}")
        self._running[entry.id] = task
        task.add_done_callback(functools.partial(self._done, entry))

    def _done(self, entry: Entry, task: asyncio.Task[Outcome]) -> None:
        self._running.pop(entry.id, None)
        if task.cancelled():
            if not entry.cancel_requested:
                self._waited_s.pop(entry.id, None)
                return  # shutting down: the task stays ours until `release` hands it over
            outcome = Outcome("cancelled", error={
                "code": "cancelled",
                "message": "Cancelled while running; its uncommitted work was rolled back."})
        elif task.exception() is not None:
            exc = task.exception()
            outcome = Outcome("failed", error={"code": "engine_error", "message": repr(exc)[:500]})
        else:
            outcome = task.result()
        self._finish(entry, outcome)
        self._pump()

    @contextlib.contextmanager
    def watch(self, ids: set[str]) -> Iterator[Watch]:
        watch = Watch(set(ids))
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)

    def _finish(self, entry: Entry, outcome: Outcome) -> None:
        now = self.clock()
        waited_s = self._waited_s.pop(entry.id, None)
        if self._metrics is not None:
            self._metrics.observe_task(entry.type, outcome.status, outcome.run_s, waited_s)
        figures = {"run_s": outcome.run_s, "cpu_s": outcome.cpu_s,
                   "peak_rss_bytes": outcome.peak_rss_bytes}
        if outcome.status == "completed":
            self.writer.update(entry.id, status="completed", finished_at=repo.to_dt(now),
                               progress=100.0, result=outcome.result, error=None, **figures)
            if outcome.used_blob:
                self.writer.drop_blob(entry.id)
            self._resolve(entry.id, "completed", now)
        elif (outcome.status == "failed" and outcome.retryable and not entry.cancel_requested
              and entry.attempts <= entry.max_retries):
            delay = retry_delay_s(entry.attempts, self.settings.retry_base_s,
                                  self.settings.retry_max_s, self._rng)
            entry.start_at = now + delay
            self.sched.requeue(entry, now)
            self.writer.update(entry.id, status=entry.status, start_at=repo.to_dt(entry.start_at),
                               error=outcome.error, **figures)
            self._arm_timer()
        else:
            self.writer.update(entry.id, status=outcome.status, finished_at=repo.to_dt(now),
                               error=outcome.error, **figures)
            self._resolve(entry.id, outcome.status, now)

    def _resolve(self, task_id: str, status: str, now: float) -> None:
        """The task ended (and what depended on it was released or failed); waiters hear of
        each end after its state change is queued for the writer."""
        self._forget_blob(task_id)
        released, failed = self.sched.finished(task_id, status, now)
        for child in released:
            self.writer.update(child.id, status=child.status)
        for child, dep, dep_status in failed:
            self.writer.update(child.id, status="failed", finished_at=repo.to_dt(now), error={
                "code": "dependency_failed", "message": f"Dependency {public(dep)} {dep_status}."})
        for watch in self._watches:
            watch.tell(task_id)
            for child, _, _ in failed:
                watch.tell(child.id)
        if released:
            self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.sched.next_start()
        if at is None or self._closing or not self._run_tasks:
            return
        if self._timer is not None and not self._timer.done():
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.create_task(self._fire(at), name="metis-task-timer")

    async def _fire(self, at: float) -> None:
        await self._sleep(max(0.0, at - self.clock()))
        self._timer, self._timer_at = None, None
        for entry in self.sched.release_due(self.clock()):
            self.writer.update(entry.id, status=entry.status)
        self._pump()
        self._arm_timer()

    def _progress(self, task_id: str, percent: float, message: str | None) -> None:
        if task_id in self._running:
            self.writer.update(task_id, progress=percent, message=message)

    async def _blob(self, task_id: str) -> bytes | None:
        pending = self._uncommitted.get(task_id)
        if pending is not None:
            # The bytes are in memory, but the handler waits for its task's row: an upload
            # whose row the database refused (503 database_busy) must not store its document.
            data, committed = pending
            await asyncio.shield(committed)
            return data
        kept = self._forget_blob(task_id)  # a retry reads it from the database
        if kept is not None:
            return kept
        async with self.engine.connect() as conn:
            return await repo.blob(conn, task_id)

    def _forget_blob(self, task_id: str) -> bytes | None:
        data = self._blobs.pop(task_id, None)
        if data is not None:
            self._blob_bytes -= len(data)
        return data

    # -- cancel and retry

    async def cancel(self, task_id: str) -> TaskOut:
        entry = self.sched.entries.get(task_id)
        if entry is None:
            return await self._cancel_elsewhere(task_id)
        now = self.clock()
        if entry.status in QUEUED:
            self.writer.update(task_id, status="cancelled", finished_at=repo.to_dt(now),
                               cancel_requested=True, error={"code": "cancelled",
                                                             "message": "Cancelled before it started."})
            self._resolve(task_id, "cancelled", now)
            return await self.get(task_id)
        entry.cancel_requested = True
        self.writer.update(task_id, cancel_requested=True)
        task = self._running.get(task_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
            await asyncio.sleep(0)  # let the done-callback record the outcome
        return await self.get(task_id)

    async def _cancel_elsewhere(self, task_id: str) -> TaskOut:
        """A task this process does not hold: finished (409), unowned, or another process's."""
        await self.sync()
        now = repo.to_dt(self.clock())
        async with self.engine.begin() as conn:
            task = await repo.unfinished(conn, task_id)
            if task.owner is None:
                await repo.cancel_queued(conn, task_id, now, {
                    "code": "cancelled", "message": "Cancelled before it started."})
            # The owning process sees the request at its next heartbeat and stops the task.
            await repo.request_cancel(conn, task_id)
            return await repo.get(conn, task_id)

    async def retry(self, task_id: str) -> TaskOut:
        await self.sync()
        owner = self.worker_id if self._run_tasks else None
        async with self.engine.begin() as conn:
            await repo.requeue(conn, task_id, owner)
            row = await repo.row(conn, task_id)
        if self._run_tasks:
            self._load([row])
            await self._check_external()
            self._pump()
        return await self.get(task_id)

    # -- ownership, leases and recovery

    def _load(self, rows: Iterable[Any]) -> None:
        now = self.clock()
        for row in rows:
            if row.id in self.sched.entries:
                continue
            m = dict(row._mapping)
            self.sched.add(_entry(m, set(m["dependencies"] or ())), now)
        self._pump()
        self._arm_timer()

    async def _heartbeats(self) -> None:
        while True:
            await self._sleep(self.settings.heartbeat_s)
            try:
                await self._heartbeat()
            except Exception as exc:  # the database may be down for a while; keep running
                log.warning("task heartbeat failed: %s", exc)

    async def _heartbeat(self) -> None:
        now = self.clock()
        latest = self.monitor.latest
        async with self.engine.begin() as conn:
            await leases.heartbeat(
                conn, self.worker_id, "embedded", repo.to_dt(now), concurrency=self.limit,
                running=len(self._running), resources=latest.as_dict() if latest else {},
                alerts=[a.model_dump(mode="json") for a in list(self.monitor.alerts)[-10:]],
            )
            cancels = await repo.cancel_requests(conn, self.worker_id)
            dead = await leases.dead_workers(conn, self.worker_id, repo.to_dt(now),
                                           self.settings.lease_s)
            adopted = await leases.adopt(conn, self.worker_id, dead)
            rows = await repo.owned_unfinished(conn, self.worker_id) if adopted else []
        if adopted:
            log.warning("re-queued %d unfinished tasks of stopped processes", adopted)
            self._load(rows)
        for task_id in cancels:
            entry = self.sched.entries.get(task_id)
            if entry is not None and not entry.cancel_requested:
                asyncio.create_task(self.cancel(task_id))
        await self._check_external()
        self._pump()  # a deferred low task may have waited its longest by now

    async def _check_external(self) -> None:
        """Resolves waiting tasks whose dependencies this process does not hold."""
        outside = self.sched.external_blockers()
        if not outside:
            return
        async with self.engine.connect() as conn:
            found = await repo.statuses(conn, outside)
        now = self.clock()
        for dep in outside:
            status = found.get(dep, "cancelled")
            if status in FINISHED:
                self._resolve(dep, status, now)
        self._pump()

    async def runtime(self) -> dict[str, Any]:
        latest = self.monitor.latest
        async with self.engine.connect() as conn:
            workers = await leases.live_workers(conn, repo.to_dt(self.clock()), self.settings.lease_s)
        return {
            "concurrency": self.limit, "max_concurrency": self.settings.concurrency,
            "running": len(self._running), "resources": latest.as_dict() if latest else {},
            "alerts": list(self.monitor.alerts), "workers": workers,
        }


def _entry(row: dict[str, Any], blocked_by: set[str]) -> Entry:
    start_at = row["start_at"]
    return Entry(
        id=row["id"], type=row["type"], priority=row["priority"],
        created=repo._aware(cast(datetime, row["created_at"])).timestamp(),
        params=row["params"], timeout_s=row["timeout_s"], max_retries=row["max_retries"],
        attempts=row["attempts"], blocked_by=set(blocked_by),
        start_at=repo._aware(cast(datetime, start_at)).timestamp() if start_at else None,
    )
