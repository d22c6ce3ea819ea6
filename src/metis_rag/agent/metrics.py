"""Prometheus metrics of agent mode, registered on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from .evaluate import Scores

_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_MS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, 60)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queries = Counter("metis_agent_queries", "Agent answers, by plan kind.",
                               ["kind"], registry=r)
        self.scores = Histogram("metis_agent_score", "Evaluator scores of agent answers (0-1).",
                                ["score"], buckets=_SCORE_BUCKETS, registry=r)
        self.refinements = Counter("metis_agent_refinements",
                                   "Refinement rounds run on low-scoring answers.", registry=r)
        self.duration = Histogram("metis_agent_duration_seconds", "Time of one agent answer.",
                                  buckets=_MS_BUCKETS, registry=r)
        self.steps = Counter("metis_agent_steps", "Plan steps, by operation and outcome.",
                             ["op", "status"], registry=r)
        self.step_overhead = Histogram(
            "metis_agent_step_overhead_seconds",
            "Time of a plan step outside its tool (the agent's own cost).", buckets=_MS_BUCKETS,
            registry=r)

    def step(self, op: str, status: str, elapsed_ms: float, tool_ms: float) -> None:
        self.steps.labels(op, status).inc()
        self.step_overhead.observe(max(0.0, elapsed_ms - tool_ms) / 1000)

    def answer(self, kind: str, scores: Scores, rounds: int, total_ms: float) -> None:
        self.queries.labels(kind).inc()
        for name in ("groundedness", "relevance", "completeness"):
            self.scores.labels(name).observe(getattr(scores, name))
        if rounds:
            self.refinements.inc(rounds)
        self.duration.observe(total_ms / 1000)
