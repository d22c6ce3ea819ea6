"""Load shedding: the task engine's concurrency follows the machine's CPU, memory and I/O wait,
and a metric crossing its threshold raises an alert (once per crossing, logged and kept).

The readings come from `observability.system`, the crossings from `observability.alerts`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ..config import TaskSettings
from ..observability.alerts import Crossings
from ..observability.system import Sample, Sampler, psutil_sampler
from .types import Alert

__all__ = ["ResourceMonitor", "Sample", "Sampler", "psutil_sampler"]

log = logging.getLogger("metis.tasks")


class ResourceMonitor:
    """Adjusts `limit` between `minimum` and `maximum`: down by one per overloaded sample
    (CPU, memory or I/O wait above threshold), up by one per calm sample (well below).

    CPU sheds for what other processes use: this process's tasks are bounded by `maximum`
    already, and its own CPU use is mostly the embedding model, one call at a time, which
    fills the cores whether one task or four wait for it. Lowering the limit for that only
    left the model idle while a single task parsed and stored (ingestion measured at one
    document per model call, concurrency 1 within 10 s). Alerts still read the machine's CPU.
    """

    def __init__(
        self, settings: TaskSettings, sampler: Sampler, *, maximum: int, source: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[int], object] | None = None,
    ) -> None:
        self.settings = settings
        self.sampler = sampler
        self.maximum = maximum
        self.minimum = min(settings.min_concurrency, maximum)
        self.limit = maximum
        self.latest: Sample | None = None
        self.alerts: deque[Alert] = deque(maxlen=50)
        self._crossings = Crossings()
        self._source = source
        self._clock = clock
        self._sleep = sleep
        self._on_change: Callable[[int], object] | None = on_change
        self._task: asyncio.Task[None] | None = None

    def thresholds(self) -> dict[str, float]:
        s = self.settings
        return {"cpu_percent": s.cpu_high_percent, "memory_percent": s.memory_high_percent,
                "disk_percent": s.disk_high_percent, "iowait_percent": s.iowait_high_percent}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metis-resource-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._sleep(self.settings.monitor_interval_s)
            try:
                sample = await asyncio.to_thread(self.sampler)
            except Exception as exc:  # a failing probe must not stop the engine
                log.warning("resource sample failed: %s", exc)
                continue
            self.observe(sample)

    def observe(self, sample: Sample) -> int:
        """Takes one sample into account; returns the new concurrency limit."""
        self.latest = sample
        values = sample.as_dict()
        for metric, threshold in self.thresholds().items():
            value = values[metric]
            if value >= threshold:
                if self._crossings.enter(metric):
                    self._alert(metric, value, threshold)
            elif value < threshold * 0.9:
                self._crossings.leave(metric)
        # Disk use is alerted but does not shed work: fewer tasks would not free any disk.
        pressure = {**values,
                    "cpu_percent": max(0.0, sample.cpu_percent - sample.process_cpu_percent)}
        shed = {m: t for m, t in self.thresholds().items() if m != "disk_percent"}
        overloaded = any(pressure[m] >= t for m, t in shed.items())
        calm = all(pressure[m] < t * 0.75 for m, t in shed.items())
        before = self.limit
        if overloaded:
            self.limit = max(self.minimum, self.limit - 1)
        elif calm:
            self.limit = min(self.maximum, self.limit + 1)
        if self.limit != before and self._on_change is not None:
            self._on_change(self.limit)
        return self.limit

    def _alert(self, metric: str, value: float, threshold: float) -> None:
        name = metric.removesuffix("_percent").replace("iowait", "I/O wait")
        alert = Alert(
            at=datetime.fromtimestamp(self._clock(), UTC), metric=metric, value=value,
            threshold=threshold, source=self._source,
            message=f"{name} at {value:.0f}% is above the {threshold:.0f}% threshold; "
                    f"task concurrency is {self.limit}.",
        )
        self.alerts.append(alert)
        log.warning("resource alert: %s", alert.message)
