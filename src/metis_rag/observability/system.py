"""Every reading Metis takes from psutil, in one place: the process's CPU and memory (for the
dashboard's sampler) and the machine's CPU, memory, disk and I/O wait (for the task engine's
load shedding)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


def cpu_cores() -> int:
    return psutil.cpu_count() or 1


def process_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def process_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


class CpuMeter:
    """The process's CPU use since the previous reading, in percent of the whole machine
    (0-100 however many cores), or None until a reading spans at least `min_interval_s`.

    psutil's `Process.cpu_percent` divides CPU time counted in 10 ms clock ticks by the wall
    time since its previous call and multiplies by the number of cores: a first sample taken a
    fraction of a millisecond after priming read one tick as thousands of percent.
    """

    def __init__(self, clock: Callable[[], float], *, min_interval_s: float = 0.5,
                 cpu_seconds: Callable[[], float] = process_cpu_s,
                 cores: int | None = None) -> None:
        self._clock = clock
        self._cpu_seconds = cpu_seconds
        self.cores = cores or cpu_cores()
        self.min_interval_s = min_interval_s
        self._last = (clock(), cpu_seconds())

    def read(self) -> float | None:
        now, cpu = self._clock(), self._cpu_seconds()
        elapsed = now - self._last[0]
        if elapsed < self.min_interval_s:
            return None  # too short to measure; keep the start of the interval
        percent = (cpu - self._last[1]) / (elapsed * self.cores) * 100
        self._last = (now, cpu)
        # a tick counted late can push a busy interval a hair over 100
        return round(min(100.0, max(0.0, percent)), 1)


@dataclass(frozen=True, slots=True)
class Sample:
    """The machine's load, as the task engine sheds work by it."""

    cpu_percent: float
    memory_percent: float
    disk_percent: float
    iowait_percent: float
    process_rss_bytes: int = 0
    # This process's share of the machine's CPU (0-100), within `cpu_percent`.
    process_cpu_percent: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


Sampler = Callable[[], Sample]


def psutil_sampler(path: Path) -> Sampler:
    """System-wide CPU (since the previous call) and this process's share of it, memory, disk
    use of `path`, and I/O wait."""
    proc = psutil.Process()
    # Not Process.cpu_percent, which a call soon after the previous one inflates: see CpuMeter.
    own_cpu = CpuMeter(time.monotonic, min_interval_s=0.2)
    last_own = 0.0
    psutil.cpu_times_percent(interval=None)  # primes the "since last call" counters

    def sample() -> Sample:
        nonlocal last_own
        own = own_cpu.read()
        last_own = last_own if own is None else own
        times = psutil.cpu_times_percent(interval=None)
        iowait = getattr(times, "iowait", 0.0)
        return Sample(
            cpu_percent=round(max(0.0, 100.0 - times.idle - iowait), 1),
            memory_percent=psutil.virtual_memory().percent,
            disk_percent=psutil.disk_usage(str(path)).percent,
            iowait_percent=round(iowait, 1),
            process_rss_bytes=int(proc.memory_info().rss),
            process_cpu_percent=last_own,
        )

    return sample
