"""The `TaskBackend` contract, run on every backend: embedded (SQLite, PostgreSQL) and Celery
(two real worker processes, RabbitMQ, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from metis_rag.errors import Conflict, InvalidInput, NotFound
from metis_rag.tasks.base import TaskBackend
from metis_rag.tasks.types import Priority, TaskOut, TaskSpec
from tests.waiting import eventually

pytestmark = pytest.mark.slow


async def submit(backend: TaskBackend, type: str, **kw: object) -> TaskOut:
    params = kw.pop("params", {})
    return (await backend.submit([TaskSpec(type, params=params, **kw)]))[0]  # type: ignore[arg-type]


async def until(backend: TaskBackend, task_id: str, cond, timeout_s: float = 30) -> TaskOut:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        task = await backend.get(task_id)
        if cond(task):
            return task
        assert time.monotonic() < deadline, f"condition never met: {task}"
        await asyncio.sleep(0.02)


async def finished(backend: TaskBackend, task_id: str, timeout_s: float = 60) -> TaskOut:
    return (await backend.wait([task_id], timeout_s=timeout_s))[task_id]


async def test_a_task_runs_and_records_its_result_and_figures(backend: TaskBackend) -> None:
    task = await submit(backend, "sleep", params={"seconds": 0.05, "steps": 2}, name="nap",
                        priority=Priority.high)
    assert task.status == "pending" and task.name == "nap" and task.priority == "high"
    done = await finished(backend, task.id)
    assert done.status == "completed" and done.result == {"slept_s": 0.05}
    assert done.progress == 100 and done.attempts == 1 and done.error is None
    assert done.created_at <= done.started_at <= done.finished_at  # type: ignore[operator]
    assert done.run_s is not None and done.run_s >= 0.04
    assert done.wait_s is not None and done.wait_s >= 0
    assert done.cpu_s is not None and done.peak_rss_bytes and done.peak_rss_bytes > 10_000_000


async def test_a_progress_message_with_a_nul_is_kept_and_stops_no_write(
    backend: TaskBackend,
) -> None:
    """A handler's message is its own text: PostgreSQL text cannot hold a NUL, and a batch of
    state changes holding one failed and was retried for ever, with every later change (and,
    on the embedded engine, every submission) behind it. It is kept with U+FFFD instead."""
    task = await submit(backend, "sleep", params={"seconds": 0.05, "steps": 1, "label": "a\x00b "})
    done = await finished(backend, task.id)
    assert (done.status, done.message) == ("completed", "a\ufffdb step 1/1")
    after = await submit(backend, "sleep", params={"seconds": 0.01, "steps": 1})
    assert (await finished(backend, after.id, timeout_s=30)).status == "completed"


async def test_progress_is_visible_while_running(backend: TaskBackend) -> None:
    task = await submit(backend, "sleep", params={"seconds": 1.5, "steps": 10})
    mid = await until(backend, task.id, lambda t: t.status == "running" and 0 < t.progress < 100)
    assert mid.message and mid.message.startswith("step")
    assert (await finished(backend, task.id)).progress == 100


async def test_high_priority_waits_only_behind_running_tasks(backend: TaskBackend) -> None:
    slots: int = backend.slots  # type: ignore[attr-defined]
    # Staggered, so that one slot frees at a time and the next start is unambiguous.
    blockers = [await submit(backend, "sleep", params={"seconds": 1.0 + 0.6 * i, "steps": 1})
                for i in range(slots)]
    for b in blockers:
        await until(backend, b.id, lambda t: t.status == "running")
    low = (await backend.submit([TaskSpec("stamp", priority=Priority.low) for _ in range(12)]))
    urgent = await submit(backend, "stamp", priority=Priority.critical)
    done = await backend.wait([t.id for t in low] + [urgent.id], timeout_s=60)
    first_low = min(done[t.id].result["started"] for t in low)
    assert done[urgent.id].result["started"] <= first_low
    # ... and it did wait for a running task to finish: it never preempts one. The first
    # blocker sleeps 1.0 s from its start, so no slot was free before then. (Its recorded
    # `finished_at` is no bound: outcomes are written behind, by a group commit that came
    # over 50 ms late at load 13.)
    first = await backend.get(blockers[0].id)
    assert first.started_at is not None and done[urgent.id].started_at is not None
    first_free = first.started_at + timedelta(seconds=1.0)
    assert done[urgent.id].started_at >= first_free - timedelta(milliseconds=10)


async def test_scheduled_start_is_honoured(backend: TaskBackend) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=1.5)
    task = await submit(backend, "stamp", start_at=start_at)
    assert task.status == "scheduled" and task.start_at == start_at
    # A task due now, submitted after it, runs: the workers have had their chance to start
    # the scheduled one early. (If the probe took past its start time, it may have begun.)
    probe = await submit(backend, "stamp")
    assert (await finished(backend, probe.id)).status == "completed"
    meanwhile = await backend.get(task.id)
    assert meanwhile.status == "scheduled" or datetime.now(UTC) >= start_at, meanwhile
    done = await finished(backend, task.id)
    assert done.result["started"] >= start_at.timestamp() - 0.01


async def test_dependencies_run_in_order(backend: TaskBackend) -> None:
    tasks = await backend.submit([
        TaskSpec("sleep", id="dep-c", params={"seconds": 0.05}, depends_on=["dep-b"]),
        TaskSpec("sleep", id="dep-b", params={"seconds": 0.05}, depends_on=["dep-a"]),
        TaskSpec("sleep", id="dep-a", params={"seconds": 0.2}),
    ])
    assert [t.status for t in tasks] == ["waiting", "waiting", "pending"]
    done = await backend.wait(["dep-a", "dep-b", "dep-c"], timeout_s=60)
    assert {t.status for t in done.values()} == {"completed"}
    assert done["dep-a"].finished_at <= done["dep-b"].started_at  # type: ignore[operator]
    assert done["dep-b"].finished_at <= done["dep-c"].started_at  # type: ignore[operator]
    later = await submit(backend, "stamp", depends_on=["dep-c"])  # already completed: runs now
    assert later.status == "pending" and (await finished(backend, later.id)).status == "completed"


async def test_a_failed_dependency_fails_its_dependants_with_the_reason(backend: TaskBackend) -> None:
    tasks = await backend.submit([
        TaskSpec("fail", id="root-f", params={"permanent": True}),
        TaskSpec("stamp", id="child-f", depends_on=["root-f"]),
        TaskSpec("stamp", id="grandchild-f", depends_on=["child-f"]),
    ])
    assert [t.status for t in tasks] == ["pending", "waiting", "waiting"]
    done = await backend.wait(["root-f", "child-f", "grandchild-f"], timeout_s=60)
    assert done["root-f"].status == "failed" and done["root-f"].error.code == "always_fails"  # type: ignore[union-attr]
    assert done["child-f"].status == "failed"
    assert done["child-f"].error.code == "dependency_failed"  # type: ignore[union-attr]
    assert "root-f failed" in done["child-f"].error.message  # type: ignore[union-attr]
    assert "child-f failed" in done["grandchild-f"].error.message  # type: ignore[union-attr]
    after = await submit(backend, "stamp", depends_on=["root-f"])
    assert after.status == "failed" and "root-f failed" in after.error.message  # type: ignore[union-attr]


async def test_a_cancelled_dependency_fails_its_dependants(backend: TaskBackend) -> None:
    await backend.submit([
        TaskSpec("sleep", id="slow-root", params={"seconds": 30}),
        TaskSpec("stamp", id="slow-child", depends_on=["slow-root"]),
    ])
    await until(backend, "slow-root", lambda t: t.status == "running")
    assert (await backend.cancel("slow-root")).status == "cancelled"
    child = await finished(backend, "slow-child")
    assert child.status == "failed" and "slow-root cancelled" in child.error.message  # type: ignore[union-attr]


async def test_invalid_submissions_store_nothing(backend: TaskBackend) -> None:
    with pytest.raises(InvalidInput) as cycle:
        await backend.submit([TaskSpec("stamp", id="cyc-x", depends_on=["cyc-y"]),
                              TaskSpec("stamp", id="cyc-y", depends_on=["cyc-z"]),
                              TaskSpec("stamp", id="cyc-z", depends_on=["cyc-x"])])
    assert cycle.value.code == "dependency_cycle" and "cyc-x" in cycle.value.message
    with pytest.raises(InvalidInput) as unknown:
        await backend.submit([TaskSpec("stamp", id="orphan", depends_on=["no-such-task"])])
    assert unknown.value.code == "unknown_dependency"
    with pytest.raises(InvalidInput) as bad_type:
        await backend.submit([TaskSpec("stamp", id="fine"), TaskSpec("no_such_type")])
    assert bad_type.value.code == "unknown_task_type"
    for task_id in ("cyc-x", "orphan", "fine"):
        with pytest.raises(NotFound) as missing:
            await backend.get(task_id)
        assert missing.value.code == "task_not_found"
    await submit(backend, "stamp", id="taken")
    with pytest.raises(Conflict):
        await submit(backend, "stamp", id="taken")


async def test_timeout_fails_the_task(backend: TaskBackend) -> None:
    task = await submit(backend, "sleep", params={"seconds": 10}, timeout_s=0.3, max_retries=0)
    done = await finished(backend, task.id)
    assert done.status == "failed" and done.error.code == "timeout"  # type: ignore[union-attr]
    assert done.run_s is not None and done.run_s < 5


async def test_retries_with_backoff_until_success_or_exhaustion(backend: TaskBackend) -> None:
    ok = await submit(backend, "flaky", params={"failures": 2}, max_retries=3)
    done = await finished(backend, ok.id)
    assert done.status == "completed" and done.attempts == 3 and done.result == {"attempt": 3}
    bad = await submit(backend, "fail", max_retries=2)
    done = await finished(backend, bad.id)
    assert done.status == "failed" and done.attempts == 3
    permanent = await submit(backend, "fail", params={"permanent": True}, max_retries=5)
    assert (await finished(backend, permanent.id)).attempts == 1  # bad input is not retried


async def test_cancel_queued_and_finished_tasks(backend: TaskBackend) -> None:
    later = await submit(backend, "stamp", start_at=datetime.now(UTC) + timedelta(hours=1))
    cancelled = await backend.cancel(later.id)
    assert cancelled.status == "cancelled" and cancelled.error.code == "cancelled"  # type: ignore[union-attr]
    with pytest.raises(Conflict) as again:
        await backend.cancel(later.id)
    assert again.value.code == "task_finished"
    with pytest.raises(NotFound):
        await backend.cancel("nope")
    await backend.submit([TaskSpec("sleep", id="holder", params={"seconds": 30}),
                          TaskSpec("stamp", id="waiter", depends_on=["holder"])])
    waiting = await backend.cancel("waiter")
    assert waiting.status == "cancelled"
    assert (await backend.cancel("holder")).status in ("cancelled", "running")
    assert (await finished(backend, "holder", timeout_s=20)).status == "cancelled"


async def test_cancelling_a_running_task_rolls_its_work_back(
    backend: TaskBackend, tmp_path: Path
) -> None:
    written = tmp_path / "written"  # the handler's sign that its row is written, uncommitted
    task = await submit(backend, "slow_write", params={"seconds": 30, "written_file": str(written)})
    await eventually(written.exists, within_s=30, what="the task never wrote its row")
    result = await backend.cancel(task.id)
    if result.status == "running":  # a remote worker stops it within its poll interval
        result = await finished(backend, task.id, timeout_s=20)
    assert result.status == "cancelled", result
    async with backend.engine.connect() as conn:
        marks = (await conn.execute(text("SELECT count(*) FROM task_marks WHERE task_id = :t"),
                                    {"t": task.id})).scalar_one()
    assert marks == 0


async def test_retry_requeues_a_failed_task(backend: TaskBackend) -> None:
    task = await submit(backend, "fail", params={"permanent": True})
    first = await finished(backend, task.id)
    assert first.status == "failed"
    requeued = await backend.retry(task.id)
    assert requeued.attempts <= 1
    second = await until(backend, task.id,
                         lambda t: t.status == "failed" and t.finished_at != first.finished_at)
    assert second.attempts == 1
    ok = await submit(backend, "stamp")
    await finished(backend, ok.id)
    with pytest.raises(Conflict) as not_failed:
        await backend.retry(ok.id)
    assert not_failed.value.code == "task_not_retryable"


async def test_list_filters_paginates_and_stats_count(backend: TaskBackend) -> None:
    ids = [t.id for t in await backend.submit([TaskSpec("stamp") for _ in range(5)])]
    await backend.wait(ids, timeout_s=60)
    items, total = await backend.list(type="stamp", status="completed", limit=2, offset=0)
    assert total >= 5 and len(items) == 2
    assert all(t.type == "stamp" and t.status == "completed" for t in items)
    assert items[0].created_at >= items[1].created_at
    rest, _ = await backend.list(type="stamp", status="completed", limit=2, offset=2)
    assert not {t.id for t in rest} & {t.id for t in items}
    stats = await backend.stats()
    assert stats.counts["completed"] >= 5 and stats.throughput_per_s > 0
    assert stats.mean_run_s is not None and stats.mean_wait_s is not None
    assert stats.concurrency >= 1 and stats.backend == backend.name


async def test_snapshot_counts_the_whole_queue_for_the_metrics(backend: TaskBackend) -> None:
    slots: int = backend.slots  # type: ignore[attr-defined]
    before = await backend.snapshot()
    blockers = [await submit(backend, "sleep", params={"seconds": 1.5, "steps": 1})
                for _ in range(slots)]
    for b in blockers:
        await until(backend, b.id, lambda t: t.status == "running")
    queued = await backend.submit([TaskSpec("stamp") for _ in range(3)])
    await backend.sync()
    during = await backend.snapshot()
    assert during.by_status["running"] >= slots
    depth = sum(during.queue_depth.values())
    assert depth >= 3 and during.by_status["pending"] == depth
    assert during.oldest_pending_s is not None and during.oldest_pending_s >= 0
    await backend.wait([t.id for t in [*blockers, *queued]], timeout_s=60)
    await backend.sync()
    after = await backend.snapshot()
    # (>=: on the shared Celery database another test's stragglers may finish meanwhile)
    assert after.by_status["completed"] - before.by_status["completed"] >= slots + 3


async def test_task_ids_are_scoped_per_tenant(backend: TaskBackend) -> None:
    # Two tenants choose the same ids; neither collides with nor depends on the other's.
    made = {}
    for tenant, seconds in (("acme", 0.05), ("globex", 0.01)):
        made[tenant] = await backend.submit([
            TaskSpec("sleep", id="nightly", params={"seconds": seconds}, tenant=tenant),
            TaskSpec("stamp", id="after", depends_on=["nightly"], tenant=tenant),
        ])
    stored = {t: [task.id for task in tasks] for t, tasks in made.items()}
    assert stored["acme"] != stored["globex"]
    done = await backend.wait([i for ids in stored.values() for i in ids], timeout_s=60)
    for tenant, (nightly, after) in stored.items():
        assert done[nightly].tenant == tenant and done[nightly].status == "completed"
        assert done[after].dependencies == [nightly]  # its own tenant's task
        assert done[nightly].finished_at <= done[after].started_at  # type: ignore[operator]
    with pytest.raises(Conflict) as again:  # its own id is still taken, under the id it chose
        await submit(backend, "stamp", id="nightly", tenant="acme")
    assert again.value.code == "task_exists" and "'nightly'" in again.value.message
    with pytest.raises(InvalidInput) as cycle:  # messages name tasks as their tenant does
        await backend.submit([TaskSpec("stamp", id="loop-a", depends_on=["loop-b"], tenant="acme"),
                              TaskSpec("stamp", id="loop-b", depends_on=["loop-a"], tenant="acme")])
    assert "acme" not in cycle.value.message and "loop-a" in cycle.value.message
    with pytest.raises(InvalidInput) as foreign:  # a dependency never reaches another tenant
        await submit(backend, "stamp", tenant="globex", depends_on=[stored["acme"][0]])
    assert foreign.value.code == "unknown_dependency"


async def test_a_submission_the_database_refuses_fails_alone(backend: TaskBackend) -> None:
    """Concurrent submissions share one commit. Two that name the same new id both pass the
    check for it (neither is stored yet): the database refuses the second, and that one alone
    fails (409 `task_exists`); the submissions beside it in the commit are stored. They all
    failed with it before."""
    tag = uuid.uuid4().hex[:8]
    subs = [await backend.prepare([TaskSpec("noop", id=f"{tag}-{name}")], owner=None)
            for name in ("same", "same", "a", "b")]
    writer = backend.writer  # type: ignore[attr-defined]  # both backends have one
    outcomes = await asyncio.gather(*(writer.insert(s.rows, s.edges, s.blobs) for s in subs),
                                    return_exceptions=True)
    ids = [s.rows[0]["id"] for s in subs]
    try:
        assert outcomes[0] is None and outcomes[2:] == [None, None], outcomes
        assert isinstance(outcomes[1], Conflict) and outcomes[1].code == "task_exists"
        async with backend.engine.connect() as conn:
            stored = (await conn.execute(text("SELECT id FROM tasks WHERE id IN (:a, :b, :c)"),
                                         dict(zip("abc", ids[1:], strict=True)))).scalars()
            assert sorted(stored) == sorted(set(ids))
    finally:  # never run: not this suite's business to leave them pending
        async with backend.engine.begin() as conn:
            await conn.execute(text("DELETE FROM tasks WHERE id IN (:a, :b, :c)"),
                               dict(zip("abc", ids[1:], strict=True)))
