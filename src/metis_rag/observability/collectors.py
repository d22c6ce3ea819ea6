"""A collector that reads live counters at scrape time: cache levels, the DB pool, tasks.

The cache levels already count their hits and misses, so exporting them from here (rather than
counting again on the hot path) costs nothing per lookup and can never disagree with
`/api/cache/stats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.pool import Pool

    from ..cache.levels import Caches
    from .metrics import Metrics, TaskSnapshot

TIERED_LEVELS = ("exact", "retrieval", "llm", "embedding", "document", "tool")


def tier_name(backend: object) -> str:
    return type(backend).__name__.removesuffix("Backend").lower()


def cache_counts(caches: Caches) -> dict[str, dict[str, Any]]:
    """Per level: hits, misses, errors and hits per tier, straight from the live counters."""
    out: dict[str, dict[str, Any]] = {}
    tiers = [tier_name(b) for b in caches.backends]
    for name in TIERED_LEVELS:
        s = caches.level(name).stats()
        out[name] = {"hits": s.hits, "misses": s.misses, "errors": s.errors,
                     "by_tier": dict(zip(tiers, s.hits_by_tier, strict=False))}
    sem = caches.semantic
    out["semantic"] = {"hits": sem.hits, "misses": sem.misses, "errors": 0, "by_tier": {},
                       "entries": sem.entries}
    return out


def pool_stats(pool: Pool | None) -> dict[str, int] | None:
    """Connections of a queue pool: configured size, in use, idle, overflow in use."""
    if pool is None or not hasattr(pool, "checkedout"):
        return None
    p: Any = pool
    return {
        "size": int(p.size()),
        "checked_out": int(p.checkedout()),
        "checked_in": int(p.checkedin()),
        # QueuePool counts overflow from -size: negative until the pool itself is full.
        "overflow": max(0, int(p.overflow())),
        "max_overflow": int(getattr(p, "_max_overflow", 0)),
    }


class LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Families depend on what is wired; an empty describe() makes the registry call
        # collect() at scrape time only.
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        if m.caches is not None:
            yield from _cache_metrics(m.caches)
        pool = pool_stats(m.pool)
        if pool is not None:
            yield from _pool_metrics(pool)
        yield from _task_metrics(m.task_provider is not None, m.task_snapshot)


def _cache_metrics(caches: Caches) -> Iterator[Metric]:
    counts = cache_counts(caches)
    hits = CounterMetricFamily("metis_cache_hits", "Cache hits, by level and tier.",
                               labels=["level", "tier"])
    misses = CounterMetricFamily("metis_cache_misses", "Cache misses, by level.", labels=["level"])
    errors = CounterMetricFamily("metis_cache_errors", "Cache tier failures, by level.",
                                 labels=["level"])
    saved = CounterMetricFamily("metis_cache_saved_seconds", "Time cache hits saved, estimated.",
                                labels=["level"])
    for level, c in counts.items():
        if c["by_tier"]:
            for tier, n in c["by_tier"].items():
                hits.add_metric([level, tier], n)
        else:
            hits.add_metric([level, "memory"], c["hits"])
        misses.add_metric([level], c["misses"])
        errors.add_metric([level], c["errors"])
        saved.add_metric([level], caches.savings.saved_ms.get(level, 0.0) / 1000)
    yield from (hits, misses, errors, saved)
    yield GaugeMetricFamily("metis_cache_semantic_entries", "Questions in the semantic index.",
                            value=counts["semantic"]["entries"])
    yield _semantic_rejected(caches)
    yield CounterMetricFamily("metis_cache_llm_calls_saved", "LLM calls the caches avoided.",
                              value=caches.savings.llm_calls)
    yield CounterMetricFamily("metis_cache_tokens_saved", "LLM tokens the caches avoided.",
                              value=caches.savings.tokens)
    yield CounterMetricFamily(
        "metis_cache_estimated_cost_saved", "Estimated LLM cost the caches avoided.",
        value=caches.savings.tokens / 1000 * caches.settings.price_per_1k_tokens)


def _semantic_rejected(caches: Caches) -> Metric:
    """Semantic lookups that served nothing, by the reason `/api/cache/stats` gives
    (`levels.semantic.rejected`), and `skipped`: lookups not run because the error bound admits
    no hit (`levels.semantic.skipped`)."""
    # Imported here: the cache package imports observability (tracing), which imports this.
    from ..cache.semantic import REJECT_REASONS

    sem = caches.semantic
    rejected = CounterMetricFamily(
        "metis_cache_semantic_rejected", "Semantic lookups that served nothing, by reason "
        "(the first failed check of the best candidate; skipped: the level is off).",
        labels=["reason"])
    counts = dict(sem.rejected)
    for reason in dict.fromkeys((*REJECT_REASONS, *counts)):
        rejected.add_metric([reason], counts.get(reason, 0))
    rejected.add_metric(["skipped"], sem.skipped)
    return rejected


def _pool_metrics(pool: dict[str, int]) -> Iterator[Metric]:
    yield GaugeMetricFamily("metis_db_pool_size", "Configured DB pool size.", value=pool["size"])
    yield GaugeMetricFamily("metis_db_pool_checked_out", "DB connections in use.",
                            value=pool["checked_out"])
    yield GaugeMetricFamily("metis_db_pool_checked_in", "Idle DB connections in the pool.",
                            value=pool["checked_in"])
    yield GaugeMetricFamily("metis_db_pool_overflow", "DB connections in use beyond the pool "
                            "size.", value=pool["overflow"])


def _task_metrics(wired: bool, snapshot: TaskSnapshot | None) -> Iterator[Metric]:
    yield GaugeMetricFamily("metis_tasks_provider_up", "1 when the task system reports its "
                            "statistics.", value=1 if snapshot is not None else 0)
    if not wired or snapshot is None:
        return
    # Read from the shared tasks table: every replica reports the whole system, so aggregate
    # these across servers with max(), never sum().
    by_status = GaugeMetricFamily("metis_tasks", "Tasks by status, whole system (the same on "
                                  "every server).", labels=["status"])
    for status, n in sorted(snapshot.by_status.items()):
        by_status.add_metric([status], n)
    depth = GaugeMetricFamily("metis_task_queue_depth", "Tasks ready to run and waiting for a "
                              "slot, by queue, whole system.", labels=["queue"])
    for queue, n in sorted(snapshot.queue_depth.items()):
        depth.add_metric([queue], n)
    yield by_status
    yield depth
    yield GaugeMetricFamily("metis_task_oldest_pending_seconds", "Age of the oldest task ready "
                            "to run and not started (0 when none), whole system.",
                            value=snapshot.oldest_pending_s or 0.0)
