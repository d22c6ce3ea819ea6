"""The rolling window behind the dashboard: steps, percentiles and expiry on a fake clock."""

from __future__ import annotations

import pytest

from metis_rag.observability.window import LatencyHistogram, RollingWindow
from tests.fakeclock import FakeClock


def test_percentiles_are_within_one_bucket() -> None:
    h = LatencyHistogram()
    for ms in range(1, 101):  # 1..100 ms
        h.add(ms / 1000)
    assert h.count == 100
    assert h.quantile_ms(0.5) == pytest.approx(50, rel=0.12)
    assert h.quantile_ms(0.95) == pytest.approx(95, rel=0.12)
    assert LatencyHistogram().quantile_ms(0.5) is None


def test_extremes_land_in_the_edge_buckets() -> None:
    h = LatencyHistogram()
    h.add(0.0)
    h.add(1e9)
    assert h.quantile_ms(0.01) is not None and h.quantile_ms(0.01) < 0.1
    assert h.quantile_ms(1.0) is not None and h.quantile_ms(1.0) > 50_000


def test_series_has_one_point_per_step_and_old_steps_expire() -> None:
    clock = FakeClock(1000.0)
    w = RollingWindow(window_s=10, step_s=2, clock=clock)
    for _ in range(4):
        w.record_request(0.010, error=False)
    w.record_request(0.500, error=True)
    clock.now += 4
    w.record_request(0.002, error=False)

    series = w.request_series()
    assert len(series) == 5
    assert [p["t"] for p in series] == [-8, -6, -4, -2, 0]
    first, last = series[2], series[4]
    assert first["rps"] == 2.5 and first["errors"] == 1
    assert first["p50_ms"] == pytest.approx(10, rel=0.12)
    assert last["rps"] == 0.5 and last["p50_ms"] == pytest.approx(2, rel=0.12)
    assert series[3]["p50_ms"] is None

    head = w.headline(60)
    assert head["requests"] == 6 and head["errors"] == 1
    assert head["error_ratio"] == pytest.approx(1 / 6, abs=1e-4)

    clock.now += 20  # everything is now older than the window
    assert w.headline(60)["requests"] == 0
    assert all(p["rps"] == 0 for p in w.request_series())
    w.record_request(0.001, error=False)
    assert w.headline(60)["requests"] == 1


def test_stages_and_samples_are_kept_per_step() -> None:
    clock = FakeClock(0.0)
    w = RollingWindow(window_s=6, step_s=2, clock=clock)
    w.record_stage("embed", 0.004)
    w.record_sample({"cpu_percent": 10})
    clock.now += 2
    w.record_stage("embed", 0.006)
    w.record_sample({"cpu_percent": 20})
    assert w.stage_summary()["embed"]["count"] == 2
    assert [(t, s["cpu_percent"]) for t, s in w.samples()] == [(-2, 10), (0, 20)]
    clock.now += 6
    assert w.samples() == [] and w.stage_summary() == {}
