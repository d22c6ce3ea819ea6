"""The in-memory scheduler: priority then age, timers, dependency release and failure cascade."""

from __future__ import annotations

import pytest

from metis_rag.errors import InvalidInput
from metis_rag.tasks.scheduler import Entry, Scheduler, check_acyclic


def entry(task_id: str, priority: int = 1, start_at: float | None = None,
          blocked_by: set[str] | None = None) -> Entry:
    return Entry(id=task_id, type="t", priority=priority, created=0.0, params={}, timeout_s=1,
                 max_retries=0, start_at=start_at, blocked_by=blocked_by or set())


def drain(s: Scheduler) -> list[str]:
    out = []
    while (e := s.pop_ready()) is not None:
        out.append(e.id)
    return out


def test_highest_priority_first_then_oldest() -> None:
    s = Scheduler()
    for i, p in enumerate([1, 0, 4, 1, 2, 4]):
        s.add(entry(f"t{i}", p), now=0)
    assert drain(s) == ["t2", "t5", "t4", "t0", "t3", "t1"]


def test_timers_release_at_their_time() -> None:
    s = Scheduler()
    s.add(entry("late", start_at=20), now=0)
    s.add(entry("soon", start_at=10), now=0)
    assert s.pop_ready() is None and s.next_start() == 10
    assert [e.id for e in s.release_due(9.9)] == []
    assert [e.id for e in s.release_due(10)] == ["soon"]
    assert drain(s) == ["soon"] and s.next_start() == 20


def test_dependencies_release_and_failures_cascade() -> None:
    s = Scheduler()
    s.add(entry("a"), now=0)
    s.add(entry("b", blocked_by={"a"}), now=0)
    s.add(entry("c", blocked_by={"a", "b"}, start_at=50), now=0)
    s.add(entry("d", blocked_by={"c"}), now=0)
    assert drain(s) == ["a"]
    released, failed = s.finished("a", "completed", now=1)
    assert [e.id for e in released] == ["b"] and failed == []
    assert drain(s) == ["b"]
    released, _ = s.finished("b", "completed", now=2)
    assert [e.id for e in released] == ["c"] and released[0].status == "scheduled"
    s.release_due(50)
    assert drain(s) == ["c"]
    _, failed = s.finished("c", "cancelled", now=51)
    assert [(e.id, dep, st) for e, dep, st in failed] == [("d", "c", "cancelled")]
    assert len(s) == 0


def test_cycles_are_rejected_with_their_path() -> None:
    check_acyclic({"a": ["b"], "b": ["c"], "c": [], "d": ["a", "c"]})
    with pytest.raises(InvalidInput) as exc:
        check_acyclic({"a": ["b"], "b": ["c"], "c": ["a"]})
    assert exc.value.code == "dependency_cycle" and "a -> b -> c -> a" in exc.value.message
    with pytest.raises(InvalidInput):
        check_acyclic({"self": ["self"]})
