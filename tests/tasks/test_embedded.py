"""The embedded engine: on-time starts and retry backoff on an injected clock, priority over
the queue, load shedding, recovery of a dead process's tasks, and a free event loop."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metis_rag.config import Settings
from metis_rag.store.db import create_engine, migrate
from metis_rag.tasks import leases, repo
from metis_rag.tasks.embedded import EmbeddedBackend
from metis_rag.tasks.handlers import build_registry
from metis_rag.tasks.resources import Sample
from metis_rag.tasks.runner import TaskContext
from metis_rag.tasks.types import Priority, TaskSpec
from tests.fakeclock import FakeClock
from tests.tasks.conftest import task_settings
from tests.waiting import eventually

CALM = Sample(cpu_percent=10, memory_percent=20, disk_percent=30, iowait_percent=0)
BUSY = Sample(cpu_percent=97, memory_percent=20, disk_percent=30, iowait_percent=0)


class Harness:
    """An embedded engine on SQLite with test handlers that record what they saw."""

    def __init__(self, tmp_path: Path, clock: FakeClock | None = None, **tasks: Any) -> None:
        self.settings = Settings(data_dir=tmp_path, tasks=task_settings(
            heartbeat_s=3600, monitor_interval_s=3600, **tasks))
        self.engine = create_engine(self.settings)
        self.registry = build_registry(self.settings.tasks)
        self.clock = clock
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.sample = CALM
        self.registry.register("block", self._block)
        self.registry.register("mark", self._mark)
        kw: dict[str, Any] = {"sampler": lambda: self.sample, "rng": random.Random(7)}
        if clock is not None:
            kw.update(clock=clock, sleep=clock.sleep)
        self.backend = EmbeddedBackend(self.engine, self.settings.tasks, self.registry,
                                       data_dir=tmp_path, **kw)

    async def _block(self, ctx: TaskContext) -> None:
        self.started.append(ctx.params.get("name", ctx.task_id))
        await self.gates.setdefault(ctx.params["gate"], asyncio.Event()).wait()

    async def _mark(self, ctx: TaskContext) -> dict[str, float]:
        self.started.append(ctx.params.get("name", ctx.task_id))
        return {"at": self.clock() if self.clock else time.time()}

    def open(self, gate: str) -> None:
        self.gates.setdefault(gate, asyncio.Event()).set()

    async def __aenter__(self) -> Harness:
        await migrate(self.engine)
        await self.backend.start(SimpleNamespace(engine=self.engine, settings=self.settings))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gate in self.gates.values():
            gate.set()
        await self.backend.close()
        await self.engine.dispose()


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    yield FakeClock(now=time.time())


async def test_a_scheduled_task_starts_on_time(tmp_path: Path, clock: FakeClock) -> None:
    async with Harness(tmp_path, clock) as h:
        start = datetime.fromtimestamp(clock.now + 60, UTC)
        task = (await h.backend.submit([TaskSpec("mark", start_at=start)]))[0]
        await clock.advance(59.5)
        # All that was ready has run (advance settles), and what the engine waits for next
        # is its start time: nothing started it early.
        assert clock.next_wakeup() == pytest.approx(start.timestamp(), abs=1e-3)
        assert (await h.backend.get(task.id)).status == "scheduled" and h.started == []
        await clock.advance(0.501)  # the start time went through microseconds

        async def done() -> bool:
            return (await h.backend.get(task.id)).status == "completed"

        await eventually(done)
        result = (await h.backend.get(task.id)).result
        assert result["at"] == pytest.approx(start.timestamp(), abs=2e-3)


async def test_retries_back_off_exponentially_with_jitter(tmp_path: Path, clock: FakeClock) -> None:
    async with Harness(tmp_path, clock, retry_base_s=10, retry_max_s=1000) as h:
        task = (await h.backend.submit([TaskSpec("flaky", params={"failures": 3}, max_retries=5)]))[0]
        delays = []
        for _ in range(3):
            async def rescheduled() -> bool:
                t = await h.backend.get(task.id)
                return t.status == "scheduled" and t.attempts == len(delays) + 1

            await eventually(rescheduled)
            t = await h.backend.get(task.id)
            delays.append(t.start_at.timestamp() - clock.now)  # type: ignore[union-attr]
            assert t.error is not None and "fails on purpose" in t.error.message
            await clock.advance(delays[-1] + 0.001)  # the database keeps microseconds
        for i, delay in enumerate(delays):  # step 10, 20, 40 s: half fixed, half random
            step = 10 * 2 ** i
            assert step / 2 <= delay <= step
        assert len(set(delays)) == 3

        async def completed() -> bool:
            return (await h.backend.get(task.id)).status == "completed"

        await eventually(completed)
        assert (await h.backend.get(task.id)).attempts == 4


async def test_wait_wakes_when_a_task_of_this_process_ends_not_at_its_next_poll(
        tmp_path: Path) -> None:
    # A poll every 50 ms added up to 50 ms to every CLI ingestion and every benchmark's end to
    # end; with a poll of an hour, only the wake-up can end the wait within the timeout.
    async with Harness(tmp_path) as h:
        [task] = await h.backend.submit([TaskSpec("block", params={"gate": "g"})])
        waiting = asyncio.create_task(h.backend.wait([task.id], timeout_s=3600, poll_s=3600))
        await eventually(lambda: h.started == [task.id], what="the task never started")
        await asyncio.sleep(0.05)  # the wait is asleep now, past its first read
        assert not waiting.done()
        h.open("g")
        done = await asyncio.wait_for(waiting, timeout=10)
        assert done[task.id].status == "completed"
        # Tasks that end because a dependency failed end here too.
        await h.backend.submit([
            TaskSpec("block", id="root", params={"gate": "r"}),
            TaskSpec("fail", id="child", depends_on=["root"]),
            TaskSpec("mark", id="grandchild", depends_on=["child"]),
        ])
        waiting = asyncio.create_task(h.backend.wait(["child", "grandchild"], timeout_s=3600,
                                                     poll_s=3600))
        await asyncio.sleep(0.05)
        await h.backend.cancel("root")
        h.open("r")
        done = await asyncio.wait_for(waiting, timeout=10)
        assert [done[i].error.code for i in ("child", "grandchild")] == [  # type: ignore[union-attr]
            "dependency_failed", "dependency_failed"]


async def test_state_changes_nobody_waits_for_gather_while_submissions_do_not_wait(
        tmp_path: Path) -> None:
    # A bulk ingestion's progress made a commit every few ms on the writer's thread. With an
    # hour to gather, only a submission or a read (a flush) gets anything written.
    async with Harness(tmp_path) as h:
        writer = h.backend.writer
        writer._behind_s = 3600
        [task] = await asyncio.wait_for(
            h.backend.submit([TaskSpec("block", params={"gate": "g"})]), timeout=10)
        await eventually(lambda: h.started == [task.id], what="the task never started")
        before = writer.batches
        for i in range(20):
            writer.update(task.id, progress=float(i))
            await asyncio.sleep(0.002)
        assert writer.batches == before
        await asyncio.wait_for(h.backend.submit([TaskSpec("mark")]), timeout=10)
        assert writer.batches == before + 1  # the submission took the changes with it
        writer.update(task.id, progress=42.0)
        got = await asyncio.wait_for(h.backend.get(task.id), timeout=10)
        assert got.status == "running" and got.progress == 42.0


async def test_an_upload_reaches_its_task_from_memory_and_a_retry_from_the_database(
        tmp_path: Path) -> None:
    # The stored copy is changed while the task waits: the first attempt must get the bytes
    # submitted (kept in memory since the commit), the retry the stored ones.
    from sqlalchemy import update

    from metis_rag.errors import MetisError
    from metis_rag.tasks.models import TaskBlob

    async with Harness(tmp_path) as h:
        seen: list[bytes] = []

        async def read(ctx: TaskContext) -> None:
            seen.append(await ctx.blob())
            if len(seen) == 1:
                raise MetisError("Fails once.", code="flaky")

        h.registry.register("read", read)
        await h.backend.submit([TaskSpec("block", params={"gate": f"b{i}"}) for i in range(2)])
        await eventually(lambda: len(h.started) == 2, what="the blockers never started")
        [task] = await h.backend.submit([TaskSpec("read", blob=b"submitted")])
        async with h.engine.begin() as conn:
            await conn.execute(update(TaskBlob).where(TaskBlob.task_id == task.id)
                               .values(data=b"stored"))
        h.open("b0")
        done = await h.backend.wait([task.id], timeout_s=30)
        assert done[task.id].status == "completed"
        assert seen == [b"submitted", b"stored"]
        assert not h.backend._blobs and h.backend._blob_bytes == 0


async def test_a_critical_task_waits_only_for_a_free_slot_never_for_the_queue(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        await h.backend.submit([TaskSpec("block", params={"gate": f"b{i}", "name": f"blocker{i}"})
                                for i in range(2)])
        await h.backend.submit([TaskSpec("mark", params={"name": f"queued{i}"},
                                         priority=Priority.high if i % 2 else Priority.normal)
                                for i in range(50)])
        await h.backend.submit([TaskSpec("mark", params={"name": "critical"},
                                         priority=Priority.critical)])
        await eventually(lambda: len(h.started) == 2, what="the blockers never started")
        # Dispatch happens in submit: had the critical task jumped a slot, it would be
        # running now, or already done and in `started`.
        assert (await h.backend.stats()).running == 2
        assert h.started == ["blocker0", "blocker1"]  # never preempts a running task
        h.open("b0")

        async def next_started() -> bool:
            return len(h.started) > 2

        await eventually(next_started)
        assert h.started[2] == "critical"
        h.open("b1")

        async def all_done() -> bool:
            return len(h.started) == 53

        await eventually(all_done)
        # then high before normal, each oldest first
        names = h.started[3:]
        assert names[:25] == [f"queued{i}" for i in range(1, 50, 2)]
        assert names[25:] == [f"queued{i}" for i in range(0, 50, 2)]


async def test_a_low_task_waits_while_a_higher_one_runs_and_then_for_its_longest(
        tmp_path: Path, clock: FakeClock) -> None:
    async with Harness(tmp_path, clock, low_priority_max_defer_s=30) as h:
        await h.backend.submit([TaskSpec("block", params={"gate": "g", "name": "ingest"})])
        await h.backend.submit([TaskSpec("mark", params={"name": "analysis"},
                                         priority=Priority.low)])
        await clock.advance(1)
        # A free slot, yet the analysis waits for the running normal task.
        assert h.started == ["ingest"]
        h.open("g")
        await eventually(lambda: h.started == ["ingest", "analysis"], what="it never started")

        await h.backend.submit([TaskSpec("block", params={"gate": "h", "name": "long"})])
        await h.backend.submit([TaskSpec("mark", params={"name": "late"}, priority=Priority.low)])
        await clock.advance(29)
        await h.backend._heartbeat()  # the heartbeat looks again once it has waited its longest
        assert "late" not in h.started
        await clock.advance(1.5)
        await h.backend._heartbeat()

        async def started() -> bool:
            return "late" in h.started

        await eventually(started, what="a low task waited past its longest")
        h.open("h")


async def test_load_lowers_concurrency_and_raises_one_alert_per_crossing(tmp_path: Path) -> None:
    async with Harness(tmp_path, concurrency=4, min_concurrency=1) as h:
        monitor = h.backend.monitor
        assert [monitor.observe(BUSY) for _ in range(5)] == [3, 2, 1, 1, 1]
        assert len(monitor.alerts) == 1 and monitor.alerts[0].metric == "cpu_percent"
        assert "97%" in monitor.alerts[0].message
        await h.backend.submit([TaskSpec("block", params={"gate": "g"}) for _ in range(4)])
        await eventually(lambda: len(h.started) == 1, what="no task started")
        assert (await h.backend.stats()).running == 1  # dispatch happens in submit
        assert len(h.started) == 1  # one at a time under load
        monitor.observe(CALM)
        # and back up as the load goes
        await eventually(lambda: len(h.started) == 2, what="a second task never started")
        monitor.observe(Sample(cpu_percent=10, memory_percent=20, disk_percent=99, iowait_percent=0))
        assert monitor.limit == 3  # a full disk is alerted, but does not shed work
        assert [a.metric for a in monitor.alerts] == ["cpu_percent", "disk_percent"]
        stats = await h.backend.stats()
        assert stats.concurrency == 3 and stats.max_concurrency == 4 and stats.running == 3
        assert [a.metric for a in stats.alerts] == ["cpu_percent", "disk_percent"]
        assert stats.resources["disk_percent"] == 99
        h.open("g")


async def test_only_other_processes_cpu_sheds_concurrency(tmp_path: Path) -> None:
    async with Harness(tmp_path, concurrency=4, min_concurrency=1) as h:
        monitor = h.backend.monitor
        ours = Sample(cpu_percent=100, memory_percent=20, disk_percent=30, iowait_percent=0,
                      process_cpu_percent=96)  # our own model fills the cores
        assert [monitor.observe(ours) for _ in range(3)] == [4, 4, 4]
        assert [a.metric for a in monitor.alerts] == ["cpu_percent"]  # still alerted
        theirs = Sample(cpu_percent=100, memory_percent=20, disk_percent=30, iowait_percent=0,
                        process_cpu_percent=5)
        assert [monitor.observe(theirs) for _ in range(2)] == [3, 2]


async def test_real_resource_samples_are_sane(tmp_path: Path) -> None:
    from metis_rag.tasks.resources import psutil_sampler

    sampler = psutil_sampler(tmp_path)
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn some CPU of our own between two samples
        pass
    sample = sampler()
    assert 0 <= sample.cpu_percent <= 100 and 0 < sample.memory_percent < 100
    assert 0 < sample.process_cpu_percent <= 100
    assert 0 < sample.disk_percent <= 100 and sample.process_rss_bytes > 10_000_000


async def test_cpu_heavy_handlers_do_not_block_the_event_loop(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        task = (await h.backend.submit([TaskSpec("cpu", params={"seconds": 1.5})]))[0]
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        done = await h.backend.wait([task.id], timeout_s=30)
        tick.cancel()
        assert done[task.id].status == "completed" and done[task.id].run_s >= 1.5  # type: ignore[operator]
        # 1.5 s of Python on the loop would stall it for 1.5 s; in a thread, it only shares
        # the GIL. (The bound is loose: this machine is shared and busy.)
        assert len(gaps) > 10 and max(gaps) < 0.6, max(gaps)


@pytest.mark.parametrize("pid", ["gone", "ours"])  # ours: a restarted container's predecessor
async def test_the_tasks_of_a_dead_process_are_run_again(tmp_path: Path, pid: str) -> None:
    if pid == "gone":
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        dead_pid = int(gone.stdout)
    else:
        dead_pid = os.getpid()
    dead_owner = f"{socket.gethostname()[:60]}:{dead_pid}:deadbeef"
    settings = Settings(data_dir=tmp_path)
    engine = create_engine(settings)
    await migrate(engine)
    now = repo.to_dt(time.time())
    async with engine.begin() as conn:
        await leases.heartbeat(conn, dead_owner, "embedded", now, concurrency=2)
        for task_id, status in (("was-running", "running"), ("was-queued", "pending")):
            await conn.execute(repo.T.insert().values(
                id=task_id, name="x", type="mark", params={"name": task_id}, priority=1,
                status=status, dependencies=[], timeout_s=60, max_retries=1,
                attempts=1 if status == "running" else 0, progress=30.0, owner=dead_owner,
                cancel_requested=False, created_at=now))
    await engine.dispose()
    async with Harness(tmp_path) as h:
        done = await h.backend.wait(["was-running", "was-queued"], timeout_s=10)
        assert {t.status for t in done.values()} == {"completed"}
        assert done["was-running"].attempts == 2  # at least once: it ran again
        assert done["was-running"].owner == h.backend.worker_id
        assert sorted(h.started) == ["was-queued", "was-running"]


async def test_two_engines_in_one_process_leave_each_other_their_tasks(tmp_path: Path) -> None:
    """Two app instances in one process share its pid: each is alive to the other (only an
    id with our pid that this process does not run is a dead predecessor's)."""
    async with Harness(tmp_path) as a, Harness(tmp_path) as b:
        task = (await a.backend.submit([TaskSpec("block", params={"gate": "g"})]))[0]

        async def running() -> bool:
            await a.backend.sync()
            return (await a.backend.get(task.id)).status == "running"

        await eventually(running)
        await a.backend._heartbeat()  # both alive, in the same process
        await b.backend._heartbeat()  # where it adopts the tasks of dead processes
        assert (await b.backend.get(task.id)).owner == a.backend.worker_id
        a.open("g")
        done = await a.backend.wait([task.id], timeout_s=30)
        assert done[task.id].status == "completed" and done[task.id].attempts == 1
        assert b.started == []
