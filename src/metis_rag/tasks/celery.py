"""`CeleryBackend`: the same task API with Celery workers (`metis worker`) doing the work.

The `tasks` table stays the source of truth: a submission is committed, then one message per
runnable task is published (priority, and `eta` for a scheduled start). A worker claims the
row before running it, so a duplicate message is harmless; messages are acknowledged late and
re-queued by RabbitMQ when a worker dies, and the server re-dispatches what a lost message or
a dead worker left behind. Tasks waiting for dependencies get their message when freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import TaskSettings
from ..errors import MissingDependency
from ..store.index import IndexFollower
from . import leases, repo
from .base import TaskBackend
from .runner import HandlerRegistry
from .types import QUEUED, TaskOut, TaskSpec
from .writer import StateWriter

log = logging.getLogger("metis.tasks")
TASK_NAME = "metis.run"
# RabbitMQ: a larger number is served first. Priority.low..critical spread over 0-9.
AMQP_PRIORITY = (0, 3, 5, 7, 9)
CANCEL_WAIT_S = 15.0
Message = tuple[str, int, datetime | None]  # task id, priority, start time


def make_celery(settings: TaskSettings) -> Any:
    """A Celery app for Metis: late acks, one message reserved per slot, real priorities."""
    try:
        from celery import Celery
        from kombu import Queue  # type: ignore[attr-defined]  # re-exported lazily, untyped
    except ImportError as exc:
        raise MissingDependency("celery", "tasks") from exc
    app = Celery("metis", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        # kombu ships no types for Queue's constructor.
        task_queues=[Queue(settings.queue, routing_key=settings.queue,  # type: ignore[no-untyped-call]
                           queue_arguments={"x-max-priority": 10})],
        task_queue_max_priority=10,
        task_default_priority=AMQP_PRIORITY[1],
        # A message is acknowledged once its task has run (its outcome queued for the next group
        # commit), and a worker holds no more messages than it runs: a SIGKILL re-queues exactly
        # those; a task whose outcome the dead worker had not committed yet is re-queued by the
        # server's sweep of dead workers' leases.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Redis brokers: emulate priorities and keep the re-delivery horizon above any eta.
        broker_transport_options={"priority_steps": list(range(10)), "sep": ":",
                                  "queue_order_strategy": "priority",
                                  "visibility_timeout": 7 * 86400},
    )
    return app


def broker_priority(settings: TaskSettings, priority: int) -> int:
    amqp = AMQP_PRIORITY[priority]
    # kombu's Redis transport serves 0 first, the opposite of AMQP.
    return 9 - amqp if settings.broker_url.startswith(("redis", "rediss")) else amqp


class Publisher:
    """Publishes `metis.run` messages from a thread (kombu is blocking). Concurrent callers'
    messages go out together: one thread hop and one producer per batch."""

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings
        self.app = make_celery(settings)
        self._connection: Any = None
        self._producer: Any = None
        self._pending: list[tuple[list[Message], asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def publish_sync(self, items: Sequence[Message]) -> None:
        # One connection of our own (kombu's producer pools are process-wide, shared with any
        # other app on the same broker), reopened once if the broker dropped it.
        for attempt in (1, 2):
            try:
                if self._connection is None:
                    self._connection = self.app.connection_for_write()
                    self._producer = self.app.amqp.Producer(self._connection)
                for task_id, priority, start_at in items:
                    self.app.send_task(
                        TASK_NAME, args=[task_id], queue=self.settings.queue,
                        producer=self._producer, priority=broker_priority(self.settings, priority),
                        eta=repo._aware(start_at) if start_at else None,
                    )
                return
            except Exception:
                self._drop_connection()
                if attempt == 2:
                    raise

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            finally:
                self._connection = self._producer = None

    async def publish(self, items: Sequence[Message]) -> None:
        if not items:
            return
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="metis-task-publisher")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), done))
        assert self._wake is not None
        self._wake.set()
        await done

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.publish_sync, [m for items, _ in batch for m in items])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self._drop_connection)
        self.app.close()


class CeleryBackend(TaskBackend):
    name = "celery"

    def __init__(
        self, engine: AsyncEngine, settings: TaskSettings, registry: HandlerRegistry,
        *, follow_index: bool = False, clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(engine, settings, registry, clock=clock)
        self.publisher = Publisher(settings)
        self.writer = StateWriter(engine)
        self._serve = follow_index
        self._sleep = sleep
        self._loops: list[asyncio.Task[None]] = []
        self._follower: IndexFollower | None = None

    async def start(self, services: Any = None) -> None:
        await self.writer.start()
        if self._serve:
            if getattr(services, "vectors", None) is not None:
                self._follower = IndexFollower(services.sessions, services.vectors,
                                               self.settings.index_follow_s, self._sleep)
                await self._follower.start()
            self._loops.append(asyncio.create_task(self._sweeps(), name="metis-task-sweeper"))

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._follower is not None:
            await self._follower.close()
        await self.writer.close()
        await self.publisher.close()

    async def submit(self, specs: Sequence[TaskSpec]) -> list[TaskOut]:
        sub = await self.prepare(specs, owner=None)
        await self.writer.insert(sub.rows, sub.edges, sub.blobs)
        ready = [(r["id"], r["priority"], r["start_at"]) for r in sub.rows
                 if r["status"] in ("pending", "scheduled")]
        try:
            await self.publisher.publish(ready)
        except Exception as exc:  # stored: the sweeper sends them once the broker is back
            log.warning("broker unavailable, %d tasks wait for re-dispatch: %s", len(ready), exc)
        return [repo.to_out(row) for row in sub.rows]

    async def cancel(self, task_id: str) -> TaskOut:
        now = repo.to_dt(self.clock())
        async with self.engine.begin() as conn:
            task = await repo.unfinished(conn, task_id)
            if task.status in QUEUED and await repo.cancel_queued(conn, task_id, now, {
                    "code": "cancelled", "message": "Cancelled before it started."}):
                await repo.settle_dependants(conn, task_id, "cancelled", now)
                return await repo.get(conn, task_id)
            await repo.request_cancel(conn, task_id)  # the worker polls for it and interrupts
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            task = await self.get(task_id)
            if task.status != "running":
                break
            await asyncio.sleep(0.05)
        return task

    async def retry(self, task_id: str) -> TaskOut:
        async with self.engine.begin() as conn:
            task = await repo.requeue(conn, task_id, None)
            freed = []
            if task.dependencies:
                # Re-check now: its dependencies may all have completed already.
                found = await repo.statuses(conn, task.dependencies)
                if all(found.get(d) == "completed" for d in task.dependencies):
                    await repo.reset_for_retry(conn, task_id, "pending", None)
            row = await repo.row(conn, task_id)
            if row.status == "pending":
                freed.append((row.id, row.priority, None))
        await self.publisher.publish(freed)
        return await self.get(task_id)

    async def runtime(self) -> dict[str, Any]:
        now = repo.to_dt(self.clock())
        async with self.engine.connect() as conn:
            workers = await leases.live_workers(conn, now, self.settings.lease_s)
            running = await repo.running_count(conn)
        alerts = sorted((a for w in workers for a in (w.get("alerts") or [])), key=lambda a: a["at"])
        return {
            "concurrency": sum(w["concurrency"] for w in workers),
            "max_concurrency": self.settings.concurrency * max(1, len(workers)),
            "running": running, "resources": {w["id"]: w["resources"] for w in workers},
            "alerts": alerts[-20:], "workers": workers,
        }

    async def _sweeps(self) -> None:
        period = min(self.settings.lease_s / 2, self.settings.redispatch_after_s / 4)
        while True:
            await self._sleep(period)
            try:
                await self.sweep()
            except Exception as exc:  # database or broker down: try again next period
                log.warning("task sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Re-dispatches what dead workers held and what lost messages left pending."""
        now = self.clock()
        async with self.engine.begin() as conn:
            dead = await leases.dead_workers(conn, "", repo.to_dt(now), self.settings.lease_s)
            items = list(await leases.requeue_running(conn, dead))
            items += await repo.stale_queued(
                conn, repo.to_dt(now - self.settings.redispatch_after_s))
            stuck = await repo.stuck_waiting(conn)
            items += await repo.settle_waiting(conn, stuck, repo.to_dt(now))
        if dead:
            log.warning("workers %s stopped; re-queued %d tasks", dead, len(items))
        await self.publisher.publish([(r[0], r[1], r[2]) for r in items])
        return len(items)

    async def sync(self) -> None:
        await self.writer.flush()

