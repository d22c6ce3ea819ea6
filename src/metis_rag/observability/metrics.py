"""`Metrics`: every Prometheus metric of one Metis app, in a registry of its own, and the calls
that feed them.

Each app gets its own `CollectorRegistry` (never the global default), so several apps in one
process (tests) never clash. Hooks for other parts of Metis:

- `observe_request`, `observe_answer`: the HTTP middleware and the chat route.
- `observe_llm_call`, `observe_embed`: `MeteredLLM` and `MeteredEmbedder` (llm.metered, embed.metered).
- `observe_microbatch(size, seconds)`: a `batching.BatchObserver`; pass it as ``on_batch``.
- `observe_task(kind, outcome, seconds, waited_s=None)`: the task system, when a task ends.
- `set_task_provider(provider)`: `monitor_services` wires `TaskBackend.snapshot`;
  `provider()` returns a `TaskSnapshot` (or an awaitable of one) with task counts by status
  and queue depths. It is polled at most once per sample step, however many scrapes or
  dashboards ask, so it may do I/O but should be cheap.

Cache levels and the DB pool are not counted twice: a collector reads their live counters at
scrape time (`watch_caches`, `watch_pool`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from .. import __version__
from ..config import ObservabilitySettings, Settings
from .alerts import AlertLog, AlertRules
from .collectors import LiveCollector
from .window import RollingWindow

if TYPE_CHECKING:
    from sqlalchemy.pool import Pool

    from ..cache.levels import Caches
    from ..schemas import ChatAnswer

log = logging.getLogger("metis.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0)
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_QUERY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
STAGES = ("embed", "retrieve", "generate", "total")


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """What the task system reports: task counts by status, tasks waiting per queue, and how
    long the oldest waiting task has waited (None when none waits)."""

    by_status: Mapping[str, int] = field(default_factory=dict)
    queue_depth: Mapping[str, int] = field(default_factory=dict)
    oldest_pending_s: float | None = None


TaskProvider = Callable[[], TaskSnapshot | Awaitable[TaskSnapshot]]


class Metrics:
    """The metric families, the rolling window behind the dashboard, and the recent alerts."""

    def __init__(
        self,
        settings: ObservabilitySettings | None = None,
        *,
        price_per_1k_tokens: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or ObservabilitySettings()
        self.price_per_1k_tokens = price_per_1k_tokens
        self.registry = r = CollectorRegistry()
        self.http_duration = Histogram(
            "metis_http_request_duration_seconds", "HTTP request latency, by route template.",
            ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.http_in_flight = Gauge(
            "metis_http_requests_in_flight", "HTTP requests being served.", registry=r)
        self.stage_duration = Histogram(
            "metis_pipeline_stage_duration_seconds",
            "Time of each stage of answering a question (total = the whole answer).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.answers = Counter(
            "metis_answers", "Answers given, by mode and the cache level that served them.",
            ["mode", "cache_level"], registry=r)
        self.llm_calls = Counter(
            "metis_llm_calls", "Calls to an LLM provider (cache hits excluded), by outcome.",
            ["provider", "outcome"], registry=r)
        self.llm_duration = Histogram(
            "metis_llm_call_duration_seconds", "Time of one LLM call.", ["provider"],
            buckets=_LLM_BUCKETS, registry=r)
        self.llm_tokens = Counter(
            "metis_llm_tokens", "Tokens sent to and received from LLM providers.",
            ["provider", "kind"], registry=r)
        self.llm_cost = Counter(
            "metis_llm_estimated_cost", "Estimated LLM cost (tokens x METIS_CACHE__PRICE_PER_"
            "1K_TOKENS).", ["provider"], registry=r)
        self.embed_batch = Histogram(
            "metis_embed_batch_size", "Texts per call to the embedding model.", ["model"],
            buckets=_SIZE_BUCKETS, registry=r)
        self.embed_duration = Histogram(
            "metis_embed_duration_seconds", "Time of one call to the embedding model.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.embed_texts = Counter(
            "metis_embed_texts", "Texts embedded by the model (rate = throughput).", ["model"],
            registry=r)
        self.microbatch = Histogram(
            "metis_embed_microbatch_size", "Concurrent queries gathered into one micro-batch.",
            buckets=_SIZE_BUCKETS, registry=r)
        self.task_duration = Histogram(
            "metis_task_duration_seconds", "Run time of finished tasks.", ["kind", "outcome"],
            buckets=_TASK_BUCKETS, registry=r)
        self.task_wait = Histogram(
            "metis_task_wait_seconds", "Time tasks waited in the queue before running.",
            ["kind"], buckets=_TASK_BUCKETS, registry=r)
        self.db_query = Histogram(
            "metis_db_query_duration_seconds", "Time of one SQL statement.", ["operation"],
            buckets=_QUERY_BUCKETS, registry=r)
        self.db_slow = Counter(
            "metis_db_slow_queries", "SQL statements over METIS_OBSERVABILITY__SLOW_QUERY_MS.",
            ["operation"], registry=r)
        self.loop_lag = Gauge(
            "metis_event_loop_lag_seconds", "Worst lateness of the sampler's timer over the last "
            "15 s: grows when the event loop that serves HTTP is saturated.",
            registry=r)
        self.loop_busy = Gauge(
            "metis_event_loop_busy_ratio", "Share of the last 15 s the event loop's thread "
            "spent on the CPU: rises with the load before latency does and tops out when the loop saturates.",
            registry=r)
        self.tool_calls = Counter(
            "metis_tool_calls", "Agent tool calls, by tool, outcome and the cache level that "
            "served them (none: the tool ran).", ["tool", "outcome", "cache_level"], registry=r)
        self.tool_duration = Histogram(
            "metis_tool_call_duration_seconds", "Time of one agent tool call, cache hits "
            "included.", ["tool"], buckets=_LATENCY_BUCKETS, registry=r)
        self.log_events = Counter(
            "metis_log_events", "Warnings and errors logged.", ["level"], registry=r)
        Info("metis_build", "Metis version.", registry=r).info({"version": __version__})
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)

        self.caches: Caches | None = None
        self.pool: Pool | None = None
        self.task_provider: TaskProvider | None = None
        self.task_snapshot: TaskSnapshot | None = None
        self._task_provider_failing = False
        self._clock = clock
        self._refreshed_at: float | None = None
        self._refresh_lock = asyncio.Lock()
        r.register(LiveCollector(self))
        self.window = RollingWindow(self.settings.window_s, self.settings.sample_interval_s, clock)
        self.alerts = AlertLog(wall_clock=wall_clock, on_event=self._count_log_event)
        self.rules = AlertRules(self.settings.alert_p95_ms, self.settings.alert_error_ratio,
                                self.settings.alert_queue_depth)
        # Child lookups through .labels() take a lock and build a key: cache them per label set.
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._query_children: dict[str, tuple[Any, Any]] = {}
        self._stage_children = {stage: self.stage_duration.labels(stage) for stage in STAGES}
        self._answer_children: dict[tuple[str, str], Any] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> Metrics:
        return cls(settings.observability, price_per_1k_tokens=settings.cache.price_per_1k_tokens)

    # -- hot path ----------------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float,
                        in_window: bool = True) -> None:
        # Normalized before the lookup: a client's made-up methods must not grow the cache.
        key = (method if method in _METHODS else "OTHER", route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_duration.labels(key[0], route,
                                                                         str(status))
        child.observe(seconds)
        if in_window:
            self.window.record_request(seconds, status >= 500)

    def observe_query(self, operation: str, seconds: float, slow: bool) -> None:
        children = self._query_children.get(operation)
        if children is None:
            children = self._query_children[operation] = (
                self.db_query.labels(operation), self.db_slow.labels(operation))
        children[0].observe(seconds)
        if slow:
            children[1].inc()

    # -- pipeline ------------------------------------------------------------------------------

    def observe_answer(self, answer: ChatAnswer) -> None:
        """Stage timings, mode and cache level of one answer (the chat route calls it)."""
        timings = answer.timings_ms
        for stage, child in self._stage_children.items():
            ms = getattr(timings, stage)
            if ms:
                child.observe(ms / 1000)
                self.window.record_stage(stage, ms / 1000)
        key = (answer.mode, answer.cache.level or "none")
        counter = self._answer_children.get(key)
        if counter is None:  # a handful of label sets: modes x cache levels
            counter = self._answer_children[key] = self.answers.labels(*key)
        counter.inc()
        if answer.warnings:
            log.warning("answer degraded: %s", "; ".join(answer.warnings))

    def observe_llm_call(self, provider: str, seconds: float, *, prompt_tokens: int = 0,
                         completion_tokens: int = 0, outcome: str = "ok") -> None:
        self.llm_calls.labels(provider, outcome).inc()
        self.llm_duration.labels(provider).observe(seconds)
        if prompt_tokens:
            self.llm_tokens.labels(provider, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.llm_tokens.labels(provider, "completion").inc(completion_tokens)
        tokens = prompt_tokens + completion_tokens
        if tokens and self.price_per_1k_tokens:
            self.llm_cost.labels(provider).inc(tokens / 1000 * self.price_per_1k_tokens)

    def observe_tool_call(self, tool: str, outcome: str, seconds: float,
                          cache_level: str | None) -> None:
        self.tool_calls.labels(tool, outcome, cache_level or "none").inc()
        self.tool_duration.labels(tool).observe(seconds)

    def observe_embed(self, model: str, texts: int, seconds: float) -> None:
        self.embed_batch.labels(model).observe(texts)
        self.embed_duration.labels(model).observe(seconds)
        self.embed_texts.labels(model).inc(texts)

    def observe_microbatch(self, size: int, seconds: float) -> None:
        self.microbatch.observe(size)

    # -- tasks -----------------------------------------------------------------------------------

    def observe_task(self, kind: str, outcome: str, seconds: float,
                     waited_s: float | None = None) -> None:
        """One finished task: `outcome` is e.g. succeeded, failed, cancelled."""
        self.task_duration.labels(kind, outcome).observe(seconds)
        if waited_s is not None:
            self.task_wait.labels(kind).observe(waited_s)

    def set_task_provider(self, provider: TaskProvider | None) -> None:
        self.task_provider = provider
        self.task_snapshot = None
        self._refreshed_at = None

    async def refresh(self) -> None:
        """Polls the task provider (which may be async) into `task_snapshot`, at most once per
        sample step: a storm of scrapes and dashboards costs one query, and waits for it."""
        async with self._refresh_lock:
            provider = self.task_provider
            at = self._refreshed_at
            if provider is None or (
                    at is not None and self._clock() - at < self.settings.sample_interval_s):
                return
            snapshot = await self._poll(provider)
            if provider is self.task_provider:  # else replaced meanwhile: the next call polls it
                self.task_snapshot = snapshot
                self._refreshed_at = self._clock()

    async def _poll(self, provider: TaskProvider) -> TaskSnapshot | None:
        try:
            result = provider()
            snapshot = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            if not self._task_provider_failing:
                log.warning("task statistics unavailable: %s: %s", type(exc).__name__, exc)
            self._task_provider_failing = True
            return None
        self._task_provider_failing = False
        return snapshot

    # -- live sources and exposition ---------------------------------------------------------

    def watch_caches(self, caches: Caches | None) -> None:
        self.caches = caches

    def watch_pool(self, pool: Pool | None) -> None:
        self.pool = pool

    async def exposition(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    def _count_log_event(self, level: str) -> None:
        self.log_events.labels(level).inc()
