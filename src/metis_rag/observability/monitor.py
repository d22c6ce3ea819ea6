"""The running server's monitoring: a sampler of gauges, alert rules, and the dashboard summary.

`monitor_services(services)` wires a `Metrics` to the live components (cache levels, DB pool, SQL
statements, log warnings) and runs the `Sampler` for as long as the app runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .collectors import cache_counts, pool_stats
from .metrics import Metrics
from .slowquery import watch_queries
from .system import CpuMeter, cpu_cores, process_rss_bytes

if TYPE_CHECKING:
    from ..services import Services

log = logging.getLogger("metis.monitor")
LAG_WINDOW_S = 15.0  # Prometheus's default scrape interval (deploy/prometheus too)


def _mb(n: int) -> float:
    return round(n / 1048576, 1)


class Sampler:
    """Every `sample_interval_s`: process CPU and memory, cache counters, tasks and the DB pool
    go into the rolling window, and the alert rules are checked."""

    def __init__(self, metrics: Metrics,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 loop_cpu_s: Callable[[], float] = time.thread_time) -> None:
        self.metrics = metrics
        self._sleep = sleep
        # CPU seconds of the thread the sampler runs in, the event loop's.
        self._loop_cpu_s = loop_cpu_s
        self._busy: deque[tuple[float, float]] = deque()  # (clock, loop CPU) over LAG_WINDOW_S
        self.cpu = CpuMeter(metrics.window.clock,
                            min_interval_s=min(0.5, metrics.settings.sample_interval_s / 2))
        self._task: asyncio.Task[None] | None = None
        # The gauge is the worst lag of the last LAG_WINDOW_S: a scrape every 15 s must not
        # miss a stall between two samples.
        self._lags: deque[float] = deque(
            maxlen=max(1, math.ceil(LAG_WINDOW_S / metrics.settings.sample_interval_s)))

    async def sample_once(self, loop_lag_s: float | None = None) -> dict[str, Any]:
        m = self.metrics
        if loop_lag_s is not None:
            self._lags.append(loop_lag_s)
            m.loop_lag.set(max(self._lags))
        busy = self._loop_busy()
        if busy is not None:
            m.loop_busy.set(busy)
        await m.refresh()
        tasks = m.task_snapshot
        sample: dict[str, Any] = {
            "cpu_percent": self.cpu.read(),
            "rss_mb": _mb(process_rss_bytes()),
            "cache": ({level: {"hits": c["hits"], "misses": c["misses"]}
                       for level, c in cache_counts(m.caches).items()}
                      if m.caches is not None else None),
            "tasks": ({"by_status": dict(tasks.by_status),
                       "queue_depth": sum(tasks.queue_depth.values()),
                       "oldest_pending_s": tasks.oldest_pending_s}
                      if tasks is not None else None),
            "pool": pool_stats(m.pool),
            "loop_lag_ms": round(max(self._lags) * 1000, 2) if self._lags else None,
            "loop_busy": None if busy is None else round(busy, 3),
        }
        m.window.record_sample(sample)
        m.rules.check(m.window.headline(60), sample["tasks"]["queue_depth"] if tasks else None)
        return sample

    def _loop_busy(self) -> float | None:
        """Share of the last LAG_WINDOW_S the event loop's thread spent on the CPU (None
        until two samples). It grows with the load while latency stays flat and tops out as
        the loop saturates (0.61-0.66 on a 2-core VM shared with the model): the leading
        signal (README, Autoscaling)."""
        now = self.metrics.window.clock()
        self._busy.append((now, self._loop_cpu_s()))
        while len(self._busy) > 2 and now - self._busy[1][0] >= LAG_WINDOW_S:
            self._busy.popleft()
        (t0, cpu0), (t1, cpu1) = self._busy[0], self._busy[-1]
        return None if t1 <= t0 else min(1.0, max(0.0, (cpu1 - cpu0) / (t1 - t0)))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metis-metrics-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        clock, step = self.metrics.window.clock, self.metrics.settings.sample_interval_s
        lag: float | None = None
        while True:
            try:
                await self.sample_once(lag)
            except Exception:  # monitoring must never take the server down
                log.exception("metrics sampling failed")
            asleep = clock()
            await self._sleep(step)
            # A saturated loop runs every callback late, this timer's included.
            lag = max(0.0, clock() - asleep - step)


@asynccontextmanager
async def monitor_services(services: Services) -> AsyncIterator[Sampler]:
    m = services.metrics
    m.watch_caches(services.caches)
    m.watch_pool(services.engine.sync_engine.pool)
    unwatch = watch_queries(services.engine.sync_engine, m, m.settings.slow_query_ms)
    m.alerts.attach()
    wired_tasks = m.task_provider is None
    if wired_tasks:
        m.set_task_provider(services.tasks.snapshot)
    sampler = Sampler(m)
    await sampler.start()
    try:
        yield sampler
    finally:
        await sampler.close()
        if wired_tasks:
            m.set_task_provider(None)
        m.alerts.detach()
        unwatch()
        m.watch_caches(None)
        m.watch_pool(None)


# -- the dashboard's JSON ----------------------------------------------------------------------


def _total(metric: Any) -> float:
    return float(sum(s.value for family in metric.collect() for s in family.samples
                     if s.name.endswith("_total")))


def _ratio(hits: float, misses: float) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses > 0 else None


def _cache_summary(m: Metrics, samples: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    if m.caches is None:
        return {"enabled": False, "levels": {}, "series": []}
    live = cache_counts(m.caches)
    with_cache = [(t, s["cache"]) for t, s in samples if s.get("cache")]
    series = []
    for (_, before), (t, after) in zip(with_cache, with_cache[1:], strict=False):
        point: dict[str, Any] = {"t": t}
        for level in after:
            point[level] = _ratio(after[level]["hits"] - before[level]["hits"],
                                  after[level]["misses"] - before[level]["misses"])
        series.append(point)
    first = with_cache[0][1] if with_cache else None
    levels = {}
    for level, c in live.items():
        start = first[level] if first else {"hits": 0, "misses": 0}
        levels[level] = {
            "hits": c["hits"], "misses": c["misses"], "hit_ratio": _ratio(c["hits"], c["misses"]),
            "window_hit_ratio": _ratio(c["hits"] - start["hits"], c["misses"] - start["misses"]),
        }
    return {"enabled": True, "levels": levels, "series": series}


def summary(m: Metrics, wall_clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, from the rolling window and the live counters."""
    w = m.window
    samples = w.samples()
    latest = samples[-1][1] if samples else {}
    tasks = m.task_snapshot
    now = (wall_clock or m.alerts.wall_clock)()
    return {
        "generated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "window_s": w.window_s,
        "step_s": w.step_s,
        "requests": {**w.headline(60), "series": w.request_series()},
        "stages": w.stage_summary(),
        "cache": _cache_summary(m, samples),
        "tasks": {
            "connected": m.task_provider is not None,
            "by_status": dict(tasks.by_status) if tasks else {},
            "queue_depth": sum(tasks.queue_depth.values()) if tasks else None,
            "oldest_pending_s": tasks.oldest_pending_s if tasks else None,
            # whole-system figures from the shared tasks table (the same on every replica)
            "scope": "system",
            "series": [{"t": t, **s["tasks"]["by_status"], "queue_depth": s["tasks"]["queue_depth"]}
                       for t, s in samples if s.get("tasks")],
        },
        "process": {
            "cpu_percent": latest.get("cpu_percent"),
            "cpu_cores": cpu_cores(),
            "loop_lag_ms": latest.get("loop_lag_ms"),
            "rss_mb": latest.get("rss_mb"),
            "series": [{"t": t, "cpu_percent": s["cpu_percent"], "rss_mb": s["rss_mb"]}
                       for t, s in samples],
        },
        "db": {"pool": pool_stats(m.pool), "slow_queries": int(_total(m.db_slow))},
        "llm": {"calls": int(_total(m.llm_calls)), "tokens": int(_total(m.llm_tokens)),
                "estimated_cost": round(_total(m.llm_cost), 6)},
        "alerts": m.alerts.recent(30),
        "firing": sorted(m.rules.firing),
    }
