"""`metis worker`: a Celery worker whose pool (`pool.LoopPool`) runs each message on one asyncio
loop holding the worker's services, so handlers run exactly as they do embedded."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import uuid
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, cast

from sqlalchemy import text

from ..batching import MicroBatcher
from ..config import Settings
from . import claims, leases, repo
from .celery import TASK_NAME, CeleryBackend, make_celery
from .pool import LoopPool
from .resources import ResourceMonitor, psutil_sampler
from .runner import Outcome, TaskContext, execute, retry_delay_s

log = logging.getLogger("metis.tasks")
CANCEL_POLL_S = 0.5
MAX_UNWRITTEN = 1000  # outcomes waiting for the database before new tasks wait too


class WorkerRuntime:
    """Claims, runs and records tasks for one worker process; renews its lease."""

    def __init__(self, settings: Settings, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.worker_id = leases.process_id(uuid.uuid4().hex[:8])
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="metis-worker-loop",
                                        daemon=True)
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._cancelled: set[str] = set()
        self._slots: asyncio.Condition | None = None
        self._stack = AsyncExitStack()
        self.monitor = ResourceMonitor(settings.tasks, psutil_sampler(settings.data_dir),
                                       maximum=settings.tasks.concurrency, source=self.worker_id)
        self._rng = random.Random()
        self._active = 0
        self._started: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def begin(self, task_id: str, redelivered: bool) -> None:
        """Called by the task body on the loop (see `LoopPool`): starts the run, which ends once
        the task ran and its outcome is queued for the next group commit (see `_record`)."""
        self._started = self.loop.create_task(self.run(task_id, redelivered))

    def take_started(self) -> asyncio.Task[None] | None:
        started, self._started = self._started, None
        return started

    async def _open(self) -> None:
        from ..services import open_services

        self.services = await self._stack.enter_async_context(
            open_services(self.settings, role="worker"))
        self.engine = self.services.engine
        self.backend = cast(CeleryBackend, self.services.tasks)  # role="worker" builds one
        self.registry = self.backend.registry
        self._slots = asyncio.Condition()
        self._outcomes: list[tuple[Any, Outcome]] = []
        self._writing = False
        self._outcome_ready = asyncio.Event()
        # Claims and outcomes use a connection each, held open: a checkout from the pool costs
        # more round trips than the statements themselves.
        self._claim_conn = HeldConnection(self.engine, isolation_level="AUTOCOMMIT")
        self._outcome_conn = HeldConnection(self.engine, isolation_level="AUTOCOMMIT")
        self._claims: MicroBatcher[tuple[str, bool], Any] = MicroBatcher(
            self._claim_batch, max_batch=256, max_wait_ms=0)
        self.monitor._on_change = lambda _: asyncio.ensure_future(self._notify())
        await self.monitor.start()
        leases.started(self.worker_id)
        await self._heartbeat()
        self._loops = [asyncio.create_task(self._every(self.settings.tasks.heartbeat_s,
                                                       self._heartbeat)),
                       asyncio.create_task(self._every(CANCEL_POLL_S, self._poll_cancels)),
                       asyncio.create_task(self._write_outcomes())]

    async def _close(self) -> None:
        await self._drain_outcomes()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.monitor.close()
        await self._claims.close()
        await self._claim_conn.close()
        await self._outcome_conn.close()
        async with self.engine.begin() as conn:
            await leases.forget_worker(conn, self.worker_id)
        leases.stopped(self.worker_id)
        await self._stack.aclose()

    async def _every(self, period_s: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await fn()
            except Exception as exc:  # the database may be down for a while; keep going
                log.warning("%s failed: %s", fn.__name__, exc)

    async def _heartbeat(self) -> None:
        latest = self.monitor.latest
        async with self.engine.begin() as conn:
            await leases.heartbeat(
                conn, self.worker_id, "celery", repo.to_dt(self.clock()),
                concurrency=self.monitor.limit, running=len(self._running),
                resources=latest.as_dict() if latest else {},
                alerts=[a.model_dump(mode="json") for a in list(self.monitor.alerts)[-10:]],
            )

    async def _poll_cancels(self) -> None:
        if not self._running:
            return
        async with self.engine.connect() as conn:
            wanted = await repo.cancel_requests(conn, self.worker_id)
        for task_id in wanted:
            task = self._running.get(task_id)
            if task is not None and task_id not in self._cancelled:
                self._cancelled.add(task_id)
                task.cancel()

    async def _notify(self) -> None:
        assert self._slots is not None
        async with self._slots:
            self._slots.notify_all()

    async def run(self, task_id: str, redelivered: bool) -> None:
        assert self._slots is not None
        async with self._slots:  # the resource monitor may have lowered the concurrency
            await self._slots.wait_for(lambda: self._active < self.monitor.limit)
            self._active += 1
        try:
            row = await self._claim(task_id, redelivered)
            if row is None:
                return
            ctx = TaskContext(task_id, row.type, row.params, row.attempts, self.services,
                              self._progress, self._blob)
            task = asyncio.create_task(execute(self.registry, ctx, row.timeout_s))
            self._running[task_id] = task
            try:
                outcome = await task
            except asyncio.CancelledError:
                if task_id not in self._cancelled or not task.cancelled():
                    raise  # the worker is stopping: the message is re-delivered, the task re-run
                outcome = Outcome("cancelled", error={
                    "code": "cancelled",
                    "message": "Cancelled while running; its uncommitted work was rolled back."})
            finally:
                self._running.pop(task_id, None)
                self._cancelled.discard(task_id)
            await self._record(row, outcome)
        finally:
            self._active -= 1
            await self._notify()

    async def _claim(self, task_id: str, redelivered: bool) -> Any:
        return await self._claims.submit((task_id, redelivered))

    async def _claim_batch(self, items: list[tuple[str, bool]]) -> list[Any]:
        """Claims every message that arrived together in one statement per kind."""
        now = repo.to_dt(self.clock())
        async with self._claim_conn as conn:
            rows: dict[str, Any] = {}
            for takeover in (False, True):
                ids = list({i for i, r in items if r is takeover})
                live = (await leases.alive(conn, self.worker_id, now, self.settings.tasks.lease_s)
                        if takeover and ids else [])
                rows.update((r.id, r) for r in await claims.claim(
                    conn, ids, self.worker_id, now, takeover=takeover, live=live))
            missing = [i for i, _ in items if i not in rows]
            states = await repo.queue_states(conn, missing) if missing else []
        # A message that came before its task's start time goes back for later.
        early = [(r[0], r[2], r[3]) for r in states
                 if r[1] in ("pending", "scheduled") and r[3] is not None]
        if early:
            await self.backend.publisher.publish(early)
        out = []
        for task_id, _ in items:  # a duplicate message in the same batch gets nothing
            out.append(rows.pop(task_id, None))
        return out

    async def _record(self, row: Any, outcome: Outcome) -> None:
        """Queues the outcome for the next group commit; the message is acknowledged meanwhile.

        Waiting for the commit before the ack would put two more database round trips on
        every task's path. If this process dies in between, the task is still `running` under
        our name in the database, and the server's sweep re-queues the tasks of dead workers:
        at least once all the same. Only a long backlog (database away) makes callers wait.
        """
        self._outcomes.append((row, outcome))
        self._outcome_ready.set()
        while len(self._outcomes) > MAX_UNWRITTEN:
            await asyncio.sleep(0.05)

    async def _write_outcomes(self) -> None:
        # Runs forever: one batch of outcomes at a time, cut when the previous one is written.
        delay = 0.5
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            batch, self._outcomes = self._outcomes, []
            if not batch:
                continue
            self._writing = True
            try:
                publish = await self._commit_outcomes(batch)
                await self.backend.publisher.publish(publish)
                delay = 0.5
            except Exception as exc:
                log.warning("recording %d task outcomes failed (%s); retrying", len(batch), exc)
                self._outcomes[:0] = batch
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                self._outcome_ready.set()
            finally:
                self._writing = False

    async def _drain_outcomes(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while (self._outcomes or self._writing) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _commit_outcomes(self, batch: list[Any]) -> list[tuple[str, int, Any]]:
        """Writes a batch of outcomes in a few statements. Each row's update stands alone (no
        transaction needed); a crash before its dependants are freed is mended by the sweep."""
        await self.backend.writer.flush()  # progress written behind must not land after this
        now = self.clock()
        tasks = self.settings.tasks
        publish: list[tuple[str, int, Any]] = []
        rows: list[dict[str, Any]] = []
        settle: list[tuple[str, str]] = []
        for row, outcome in batch:
            values: dict[str, Any] = {
                "id": row.id, "run_s": outcome.run_s, "cpu_s": outcome.cpu_s,
                "peak_rss_bytes": outcome.peak_rss_bytes, "wait_s": _wait_s(row)}
            if outcome.status == "completed":
                values.update(status="completed", finished_at=repo.to_dt(now), progress=100.0,
                              result=outcome.result, error=None)
            elif outcome.status == "failed" and outcome.retryable and row.attempts <= row.max_retries:
                at = repo.to_dt(now + retry_delay_s(row.attempts, tasks.retry_base_s,
                                                    tasks.retry_max_s, self._rng))
                values.update(status="scheduled", start_at=at, owner=None, error=outcome.error)
                publish.append((row.id, row.priority, at))
            else:
                values.update(status=outcome.status, finished_at=repo.to_dt(now),
                              error=outcome.error)
            rows.append(values)
            if values["status"] != "scheduled":
                settle.append((row.id, outcome.status))
        async with self._outcome_conn as conn:
            parents = await claims.finish_owned(conn, self.worker_id, rows)
            used = [row.id for row, outcome in batch
                    if outcome.used_blob and outcome.status == "completed"]
            if used:
                await repo.drop_blobs(conn, used)
            for task_id, status in settle:
                if task_id in parents:
                    freed = await repo.settle_dependants(conn, task_id, status, repo.to_dt(now))
                    publish += [(r[0], r[1], r[2]) for r in freed]
        return publish

    def _progress(self, task_id: str, percent: float, message: str | None) -> None:
        if task_id in self._running:
            self.backend.writer.update(task_id, progress=percent, message=message)

    async def _blob(self, task_id: str) -> bytes | None:
        async with self.engine.connect() as conn:
            return await repo.blob(conn, task_id)


class HeldConnection:
    """One connection kept open and used by one caller at a time; reopened after an error."""

    def __init__(self, engine: Any, **options: Any) -> None:
        self._engine = engine.execution_options(**options) if options else engine
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Any:
        await self._lock.acquire()
        try:
            if self._conn is None:
                self._conn = await self._engine.connect()
                if self._conn.dialect.name == "postgresql":
                    # Claims and outcomes need not wait for the WAL flush: a PostgreSQL crash
                    # can lose the last instants of them, which re-runs those tasks (at least
                    # once, as after a worker crash), never loses one. ~5 ms saved per commit.
                    await self._conn.execute(text("SET synchronous_commit TO off"))
                    # Every statement here finds its rows by key. Statistics from a table that
                    # was nearly empty (a new deployment, or one before a burst) made the
                    # planner scan the whole table for a claim instead.
                    await self._conn.execute(text("SET enable_seqscan TO off"))
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and self._conn is not None:
                conn, self._conn = self._conn, None
                await asyncio.shield(conn.close())
        finally:
            self._lock.release()

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def _wait_s(row: Any) -> float:
    ready: datetime = repo._aware(row.start_at or row.created_at)
    started: datetime = repo._aware(row.started_at)  # it is running: started_at is set
    return max(0.0, started.timestamp() - ready.timestamp())


def run_worker(settings: Settings) -> None:
    """Starts a Celery worker that executes Metis tasks until it is stopped."""
    app = make_celery(settings.tasks)
    runtime = WorkerRuntime(settings)

    @app.task(name=TASK_NAME, bind=True)  # type: ignore[untyped-decorator]  # celery ships no types
    def run(self: Any, task_id: str) -> None:
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        runtime.begin(task_id, redelivered)

    # Celery's CLI takes a pool by name only; a configured pool class is used when none is named.
    app.conf.worker_pool = LoopPool.bind(runtime)
    runtime.start()
    try:
        app.worker_main([
            "worker", f"--concurrency={settings.tasks.concurrency}",
            "-Q", settings.tasks.queue, "--without-gossip", "--without-mingle",
            "--without-heartbeat", f"--loglevel={settings.log_level.upper()}",
            "-n", f"metis-{os.getpid()}@%h",
        ])
    finally:
        runtime.stop()
