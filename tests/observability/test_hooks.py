"""What other parts report into the metrics: the task system (provider and finished tasks), LLM
calls with tokens and cost, and the alert rules and sampler behind the dashboard."""

from __future__ import annotations

import asyncio
import logging
import time

import psutil
import pytest

from metis_rag.config import LLMSettings, ObservabilitySettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.observability.alerts import AlertLog, AlertRules
from metis_rag.observability.metrics import Metrics, TaskSnapshot
from metis_rag.observability.monitor import Sampler, summary
from metis_rag.observability.system import CpuMeter
from tests.fakeclock import FakeClock
from tests.waiting import eventually

from .conftest import Served, serve
from .helpers import scrape, value


async def test_the_task_system_reports_from_the_start(served_with) -> None:  # type: ignore[no-untyped-def]
    # A step of 0.1 s: the provider is polled at most once per step, and this test waits less.
    async with served_with(observability={"sample_interval_s": 0.1},
                           tasks={"handler_modules": ["metis_rag.devtools.task_handlers"]}) as s:
        m = await s.metrics()
        assert value(m, "metis_tasks_provider_up") == 1
        assert value(m, "metis_tasks", status="completed") == 0
        assert (await s.summary())["tasks"]["connected"] is True
        r = await s.client.post("/api/tasks", json=[{"type": "stamp"} for _ in range(3)])
        assert r.status_code == 202, r.text
        ids = [t["id"] for t in r.json()]
        await s.services.tasks.wait(ids, timeout_s=30)
        await s.services.tasks.sync()

        async def all_completed() -> bool:  # once the provider's 0.1 s step has passed
            return value(await s.metrics(), "metis_tasks", status="completed") == 3

        await eventually(all_completed, what="the provider never reported the tasks")
        m = await s.metrics()
        assert value(m, "metis_task_queue_depth", queue="metis") == 0
        assert value(m, "metis_task_oldest_pending_seconds") == 0
        # observed where they ran: run time and queue wait of each finished task
        assert value(m, "metis_task_duration_seconds_count", kind="stamp", outcome="completed") == 3
        assert value(m, "metis_task_wait_seconds_count", kind="stamp") == 3
        summary_ = await s.summary()
        assert summary_["tasks"]["by_status"]["completed"] == 3
        assert summary_["tasks"]["scope"] == "system"


async def test_tasks_appear_as_the_provider_reports_them(served: Served) -> None:
    counts = {"queued": 4, "running": 1, "succeeded": 10}

    async def provider() -> TaskSnapshot:  # async: a provider may ask Redis or the database
        return TaskSnapshot(by_status=dict(counts), queue_depth={"ingest": 4},
                            oldest_pending_s=12.5)

    served.services.metrics.set_task_provider(provider)
    served.services.metrics.observe_task("ingest", "succeeded", 2.5, waited_s=0.5)
    m = await served.metrics()
    assert value(m, "metis_tasks_provider_up") == 1
    assert value(m, "metis_tasks", status="queued") == 4
    assert value(m, "metis_task_queue_depth", queue="ingest") == 4
    assert value(m, "metis_task_oldest_pending_seconds") == 12.5
    assert value(m, "metis_task_duration_seconds_count", kind="ingest", outcome="succeeded") == 1
    assert value(m, "metis_task_wait_seconds_sum", kind="ingest") == 0.5

    counts["running"] = 3
    served.services.metrics.set_task_provider(lambda: TaskSnapshot(counts, {"ingest": 2}))
    s = await served.summary()
    assert s["tasks"] == {**s["tasks"], "connected": True, "queue_depth": 2,
                          "by_status": {"queued": 4, "running": 3, "succeeded": 10}}


async def test_a_storm_of_scrapes_polls_the_provider_once_per_step() -> None:
    clock = FakeClock(100.0)
    metrics = Metrics(ObservabilitySettings(sample_interval_s=2), clock=clock)
    calls = 0

    async def provider() -> TaskSnapshot:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a query in flight while the other scrapes arrive
        return TaskSnapshot({"pending": calls}, {"metis": calls})

    metrics.set_task_provider(provider)
    pages = await asyncio.gather(*(metrics.exposition() for _ in range(50)))
    assert calls == 1
    assert all(value(scrape(p.decode()), "metis_tasks", status="pending") == 1 for p in pages)
    await clock.advance(1)
    await metrics.exposition()
    assert calls == 1
    await clock.advance(1)
    m = scrape((await metrics.exposition()).decode())
    assert calls == 2 and value(m, "metis_task_queue_depth", queue="metis") == 2


async def test_a_failing_task_provider_is_reported_not_raised(served: Served) -> None:
    def broken() -> TaskSnapshot:
        raise ConnectionError("broker unreachable")

    served.services.metrics.set_task_provider(broken)
    m = await served.metrics()
    assert value(m, "metis_tasks_provider_up") == 0
    s = await served.summary()
    assert any("task statistics unavailable" in a["event"] for a in s["alerts"])


@pytest.fixture(scope="module")
def fake_llm() -> FakeLLMServer:
    with FakeLLMServer() as server:
        yield server  # type: ignore[misc]


async def test_llm_calls_tokens_and_cost(make_settings, fake_llm: FakeLLMServer) -> None:  # type: ignore[no-untyped-def]
    fake_llm.reset(config=True)
    llm = LLMSettings(provider="openai", url=fake_llm.url, model="fake", timeout_s=5)
    # Offline analysis at ingestion: only the answers' calls are counted here.
    settings = make_settings(llm=llm, cache={"price_per_1k_tokens": 0.5},
                             analysis={"use_llm": False})
    async with serve(settings) as s:
        await s.ingest()
        answer = await s.ask("How long is the refund window?")
        assert answer["mode"] == "llm"
        await s.ask("How long is the refund window?")  # an exact cache hit: no call
        m = await s.metrics()
        name = s.services.llm.name  # type: ignore[union-attr]
        usage = answer["usage"]
        tokens = usage["prompt_tokens"] + usage["completion_tokens"]
        assert value(m, "metis_llm_calls_total", provider=name, outcome="ok") == 1
        assert value(m, "metis_llm_tokens_total", provider=name, kind="prompt") == \
            usage["prompt_tokens"]
        assert value(m, "metis_llm_tokens_total", provider=name, kind="completion") == \
            usage["completion_tokens"]
        assert value(m, "metis_llm_estimated_cost_total", provider=name) == \
            pytest.approx(tokens / 1000 * 0.5)

        fake_llm.configure(fail_rate=1.0, fail_status=503)
        degraded = await s.ask("Is shipping free?", stream=False, cache=False)
        assert degraded["mode"] == "extractive" and degraded["warnings"]
        m = await s.metrics()
        assert value(m, "metis_llm_calls_total", provider=name, outcome="provider_error") == 1
        summary_ = await s.summary()
        assert summary_["llm"]["calls"] == 2
        assert any(a["event"].startswith("answer degraded") for a in summary_["alerts"])


def test_rules_fire_once_and_resolve(caplog: pytest.LogCaptureFixture) -> None:
    rules = AlertRules(p95_ms=100, error_ratio=0.1, queue_depth=5, min_requests=10)
    calm = {"requests": 50, "p95_ms": 20.0, "error_ratio": 0.0}
    hot = {"requests": 50, "p95_ms": 400.0, "error_ratio": 0.5}
    few = {"requests": 3, "p95_ms": 400.0, "error_ratio": 1.0}
    with caplog.at_level(logging.INFO, logger="metis.alerts"):
        rules.check(few, None)
        assert rules.firing == set()
        rules.check(hot, 9)
        rules.check(hot, 9)
        assert rules.firing == {"latency_p95", "error_ratio", "queue_depth"}
        rules.check(calm, 0)
        assert rules.firing == set()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    resolved = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 3 and len(resolved) == 3
    assert "p95 latency 400 ms" in warnings[0].getMessage()


def test_alert_log_keeps_the_newest_warnings() -> None:
    alerts = AlertLog(max_alerts=3, wall_clock=lambda: 0.0)
    logger = logging.getLogger("metis.test.alerts")
    logger.addHandler(alerts)
    try:
        logger.info("not an alert")
        for i in range(5):
            logger.warning("warning %d", i, extra={"n": i})
        logger.error("an error")
    finally:
        logger.removeHandler(alerts)
    recent = alerts.recent()
    assert [a["event"] for a in recent] == ["an error", "warning 4", "warning 3"]
    assert recent[1]["fields"] == {"n": 4} and recent[0]["at"] == "1970-01-01T00:00:00+00:00"


async def test_sampler_series_and_rules_on_a_fake_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(10_000.0)
    metrics = Metrics(ObservabilitySettings(window_s=60, sample_interval_s=2, alert_p95_ms=50),
                      clock=clock, wall_clock=lambda: 1_700_000_000.0)
    metrics.set_task_provider(lambda: TaskSnapshot({"running": 2}, {"default": 7}))
    sampler = Sampler(metrics, sleep=clock.sleep)
    await sampler.start()
    try:
        for step in range(5):
            for _ in range(20):
                metrics.observe_request("GET", "/api/x", 200, 0.2 if step >= 3 else 0.01)
            await clock.advance(2)
    finally:
        await sampler.close()
    s = summary(metrics)
    # no reading until an interval long enough to measure; then a share of the machine
    cpu = [p["cpu_percent"] for p in s["process"]["series"]]
    assert cpu[0] is None and all(c is not None and 0 <= c <= 100 for c in cpu[1:])
    assert all(p["rss_mb"] > 10 for p in s["process"]["series"])
    assert [p["running"] for p in s["tasks"]["series"]] == [2] * 6
    assert s["tasks"]["queue_depth"] == 7
    assert s["requests"]["requests"] == 100
    rps = [p["rps"] for p in s["requests"]["series"] if p["rps"]]
    assert rps == [10.0] * 5
    assert s["firing"] == ["latency_p95"]
    assert s["generated_at"] == "2023-11-14T22:13:20+00:00"
    assert scrape((await metrics.exposition()).decode())  # still renders without services


def test_cpu_is_a_share_of_the_machine_and_never_read_over_a_blink() -> None:
    # The dashboard's first CPU point read ~7,500 %: psutil's per-call percent over the 0.3 ms
    # between priming and the first sample, one 10 ms clock tick times the core count.
    clock = FakeClock(50.0)
    cpu_s = [3.0]
    meter = CpuMeter(clock, min_interval_s=0.5, cpu_seconds=lambda: cpu_s[0], cores=2)
    cpu_s[0] += 0.01  # one tick, 0.3 ms later
    clock.now += 0.0003
    assert meter.read() is None
    clock.now += 2.0
    cpu_s[0] += 1.0  # one core busy for half of the 2 s: a quarter of two cores
    assert meter.read() == pytest.approx(25.2, abs=0.1)
    clock.now += 2.0
    cpu_s[0] += 4.1  # both cores busy, and a tick counted late
    assert meter.read() == 100.0
    clock.now += 2.0
    assert meter.read() == 0.0


async def test_the_real_sampler_reads_cpu_in_range_from_its_first_sample() -> None:
    metrics = Metrics(ObservabilitySettings(sample_interval_s=0.2))
    sampler = Sampler(metrics)
    first = await sampler.sample_once()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # keep one core busy
        pass
    second = await sampler.sample_once()
    assert first["cpu_percent"] is None
    cores = psutil.cpu_count() or 1
    # one core busy: about 100 / cores of the machine, less on a busy machine, never more
    # than the whole machine
    assert 0 < second["cpu_percent"] <= 100 / cores + 10


async def test_loop_lag_shows_a_blocked_event_loop() -> None:
    metrics = Metrics(ObservabilitySettings(sample_interval_s=0.1))
    sampler = Sampler(metrics)
    await sampler.start()
    async def lag() -> float | None:
        return value(scrape((await metrics.exposition()).decode()), "metis_event_loop_lag_seconds")

    async def lag_of_the_block() -> bool:
        return (await lag() or 0.0) >= 0.3

    try:
        # The first sample has no lag yet: the second measures a free loop.
        await eventually(lambda: len(metrics.window.samples()) >= 2, what="no second sample")
        free = await lag()
        time.sleep(0.5)  # a handler that blocks the loop: every timer fires late
        await eventually(lag_of_the_block, what="the blocked loop's lag never showed")
        blocked = await lag()
    finally:
        await sampler.close()
    assert free is not None and blocked is not None
    assert blocked >= 0.3 and blocked > free
    assert summary(metrics)["process"]["loop_lag_ms"] >= 300


async def test_loop_busy_is_the_loop_threads_cpu_share_over_the_last_15_s() -> None:
    clock = FakeClock(100.0)
    loop_cpu = [0.0]
    metrics = Metrics(ObservabilitySettings(sample_interval_s=5), clock=clock)
    sampler = Sampler(metrics, loop_cpu_s=lambda: loop_cpu[0])

    async def busy() -> float | None:
        return value(scrape((await metrics.exposition()).decode()), "metis_event_loop_busy_ratio")

    assert (await sampler.sample_once())["loop_busy"] is None  # nothing to compare with yet
    for _ in range(3):  # 15 s with the loop on the CPU a fifth of the time
        clock.now += 5
        loop_cpu[0] += 1.0
        await sampler.sample_once()
    assert await busy() == pytest.approx(0.2)
    for _ in range(3):  # then saturated: the quiet 15 s leave the window
        clock.now += 5
        loop_cpu[0] += 5.0
        sample = await sampler.sample_once()
    assert sample["loop_busy"] == await busy() == pytest.approx(1.0)
