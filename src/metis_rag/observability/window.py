"""`RollingWindow`: the last few minutes of requests and samples, in fixed steps, for the dashboard.

Latencies go into log-spaced buckets (20% wide), so recording one costs a logarithm and two
increments, and a percentile is exact to within a bucket whatever the traffic.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

_MIN_S = 50e-6
_GROWTH = 1.2
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = 80  # 50 µs * 1.2**80 ≈ 100 s: everything slower lands in the last bucket


def _bucket(seconds: float) -> int:
    if seconds <= _MIN_S:
        return 0
    return min(_BUCKETS - 1, int(math.log(seconds / _MIN_S) / _LOG_GROWTH))


def _bucket_value_s(index: int) -> float:
    # geometric middle of the bucket
    return float(_MIN_S * _GROWTH ** (index + 0.5))


class LatencyHistogram:
    __slots__ = ("count", "counts", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        self.counts[_bucket(seconds)] += 1
        self.count += 1
        self.total_s += seconds

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.count += other.count
        self.total_s += other.total_s

    def quantile_ms(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return round(_bucket_value_s(i) * 1000, 3)
        return round(_bucket_value_s(_BUCKETS - 1) * 1000, 3)


@dataclass(slots=True)
class _Step:
    index: int
    requests: LatencyHistogram = field(default_factory=LatencyHistogram)
    errors: int = 0
    stages: dict[str, LatencyHistogram] = field(default_factory=dict)
    sample: dict[str, Any] | None = None


def merged(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
    out = LatencyHistogram()
    for h in histograms:
        out.merge(h)
    return out


class RollingWindow:
    """Requests, stage timings and periodic samples in steps of `step_s` over `window_s`.

    `clock` is monotonic seconds (tests pass a fake). Not thread-safe by design: everything
    that records runs on the event loop.
    """

    def __init__(self, window_s: float = 300, step_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self.clock = clock
        self._steps: deque[_Step] = deque()
        self._max_steps = max(1, math.ceil(window_s / step_s))

    def _current(self) -> _Step:
        index = int(self.clock() // self.step_s)
        steps = self._steps
        if steps and steps[-1].index == index:
            return steps[-1]
        step = _Step(index)
        steps.append(step)
        while steps and steps[0].index <= index - self._max_steps:
            steps.popleft()
        return step

    def record_request(self, seconds: float, error: bool) -> None:
        step = self._current()
        step.requests.add(seconds)
        if error:
            step.errors += 1

    def record_stage(self, stage: str, seconds: float) -> None:
        stages = self._current().stages
        hist = stages.get(stage)
        if hist is None:
            hist = stages[stage] = LatencyHistogram()
        hist.add(seconds)

    def record_sample(self, sample: dict[str, Any]) -> None:
        self._current().sample = sample

    def steps(self, last_s: float | None = None) -> list[_Step]:
        """The steps still in the window (or in its last `last_s` seconds), oldest first."""
        now_index = int(self.clock() // self.step_s)
        span = self._max_steps
        if last_s is not None:
            span = min(span, max(1, math.ceil(last_s / self.step_s)))
        return [s for s in self._steps if now_index - span < s.index <= now_index]

    def headline(self, last_s: float = 60.0) -> dict[str, Any]:
        """Requests/s, percentiles and error ratio over the last `last_s` seconds."""
        last_s = min(last_s, self.window_s)
        steps = self.steps(last_s)
        hist = merged(s.requests for s in steps)
        errors = sum(s.errors for s in steps)
        return {
            "seconds": last_s,
            "requests": hist.count,
            "rps": round(hist.count / last_s, 3),
            "p50_ms": hist.quantile_ms(0.50),
            "p95_ms": hist.quantile_ms(0.95),
            "p99_ms": hist.quantile_ms(0.99),
            "errors": errors,
            "error_ratio": round(errors / hist.count, 4) if hist.count else 0.0,
        }

    def request_series(self) -> list[dict[str, Any]]:
        """One point per step of the window, empty steps included, `t` in seconds from now."""
        now_index = int(self.clock() // self.step_s)
        by_index = {s.index: s for s in self._steps}
        out = []
        for index in range(now_index - self._max_steps + 1, now_index + 1):
            step = by_index.get(index)
            t = round((index - now_index) * self.step_s, 3)
            if step is None:
                out.append({"t": t, "rps": 0.0, "p50_ms": None, "p95_ms": None, "errors": 0})
                continue
            h = step.requests
            out.append({"t": t, "rps": round(h.count / self.step_s, 3),
                        "p50_ms": h.quantile_ms(0.5), "p95_ms": h.quantile_ms(0.95),
                        "errors": step.errors})
        return out

    def stage_summary(self) -> dict[str, dict[str, Any]]:
        steps = self.steps()
        names = sorted({name for s in steps for name in s.stages})
        out = {}
        for name in names:
            h = merged(s.stages[name] for s in steps if name in s.stages)
            out[name] = {"count": h.count, "p50_ms": h.quantile_ms(0.5),
                         "p95_ms": h.quantile_ms(0.95)}
        return out

    def samples(self) -> list[tuple[float, dict[str, Any]]]:
        """(t seconds from now, sample) for each step that has one, oldest first."""
        now_index = int(self.clock() // self.step_s)
        return [(round((s.index - now_index) * self.step_s, 3), s.sample)
                for s in self.steps() if s.sample is not None]
