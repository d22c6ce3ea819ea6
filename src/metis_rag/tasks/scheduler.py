"""The in-memory queue of one engine: priority then age, scheduled starts, dependency graphs.

No I/O and no clock of its own: callers pass `now` (seconds since the epoch, from the
engine's injected clock). A task is in exactly one place: the ready heap (pending), the timer
heap (scheduled), or the waiting set (blocked by unfinished dependencies).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .ids import public
from .types import Priority


@dataclass(slots=True, eq=False)
class Entry:
    id: str
    type: str
    priority: int
    created: float
    params: dict[str, Any]
    timeout_s: float
    max_retries: int
    attempts: int = 0
    start_at: float | None = None
    status: str = "pending"
    blocked_by: set[str] = field(default_factory=set)
    cancel_requested: bool = False
    seq: int = 0
    ready_since: float = 0.0


class Scheduler:
    def __init__(self) -> None:
        self._ready: list[tuple[int, int, Entry]] = []
        self._timers: list[tuple[float, int, Entry]] = []
        self._waiting: dict[str, Entry] = {}
        self._dependants: dict[str, set[str]] = {}
        self._seq = itertools.count()
        self.entries: dict[str, Entry] = {}  # every task held here, whatever its place

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ready_count(self) -> int:
        return sum(1 for *_, e in self._ready if e.status == "pending")

    def add(self, entry: Entry, now: float) -> None:
        """Places a new (or re-queued) task by its dependencies and start time."""
        self.entries[entry.id] = entry
        for dep in entry.blocked_by:
            self._dependants.setdefault(dep, set()).add(entry.id)
        self._place(entry, now)

    def _place(self, entry: Entry, now: float) -> None:
        if entry.blocked_by:
            entry.status = "waiting"
            self._waiting[entry.id] = entry
        elif entry.start_at is not None and entry.start_at > now:
            entry.status = "scheduled"
            heapq.heappush(self._timers, (entry.start_at, next(self._seq), entry))
        else:
            entry.status = "pending"
            entry.ready_since = max(now, entry.start_at or 0.0)
            # Higher priority first, then older first (created time, then arrival order).
            entry.seq = next(self._seq)
            heapq.heappush(self._ready, (-entry.priority, entry.seq, entry))

    def peek_ready(self) -> Entry | None:
        """The task `pop_ready` would return, left in place."""
        while self._ready:
            entry = self._ready[0][2]
            if entry.status == "pending" and self.entries.get(entry.id) is entry:
                return entry
            heapq.heappop(self._ready)
        return None

    def pop_ready(self) -> Entry | None:
        entry = self.peek_ready()
        if entry is not None:
            heapq.heappop(self._ready)
            entry.status = "running"
        return entry

    def held_back(self, entry: Entry, running: Iterable[str], now: float,
                  max_defer_s: float) -> bool:
        """A `low` task waits while a higher one runs (up to `max_defer_s` after it became
        ready; the caller looks again on its heartbeat): analyses queued by a bulk ingestion
        took the cores its last files were being embedded on."""
        if entry.priority > Priority.low or now - entry.ready_since >= max_defer_s:
            return False
        return any(self.entries[i].priority > Priority.low for i in running if i in self.entries)

    def next_start(self) -> float | None:
        while self._timers and self._timers[0][2].status != "scheduled":
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def release_due(self, now: float) -> list[Entry]:
        """Moves scheduled tasks whose start time has come to the ready heap."""
        moved = []
        while self._timers and self._timers[0][0] <= now:
            _, _, entry = heapq.heappop(self._timers)
            if entry.status == "scheduled" and self.entries.get(entry.id) is entry:
                self._place(entry, now)
                moved.append(entry)
        return moved

    def requeue(self, entry: Entry, now: float) -> None:
        """A running task goes back (a retry with `start_at`, or an interrupted one)."""
        self._place(entry, now)

    def remove(self, task_id: str) -> Entry | None:
        entry = self.entries.pop(task_id, None)
        if entry is not None:
            self._waiting.pop(task_id, None)
            entry.status = "removed"
        return entry

    def finished(
        self, task_id: str, status: str, now: float
    ) -> tuple[list[Entry], list[tuple[Entry, str, str]]]:
        """Records a task's outcome: (tasks now unblocked, [(task failing, dependency, its status)]).

        A failed or cancelled dependency fails its dependants, and theirs, transitively.
        """
        self.remove(task_id)
        released: list[Entry] = []
        failed: list[tuple[Entry, str, str]] = []
        stack = [(task_id, status)]
        while stack:
            dep, dep_status = stack.pop()
            for child_id in sorted(self._dependants.pop(dep, ())):
                child = self._waiting.get(child_id)
                if child is None:
                    continue
                if dep_status == "completed":
                    child.blocked_by.discard(dep)
                    if not child.blocked_by:
                        del self._waiting[child_id]
                        self._place(child, now)
                        released.append(child)
                else:
                    self.remove(child_id)
                    failed.append((child, dep, dep_status))
                    stack.append((child_id, "failed"))
        return released, failed

    def external_blockers(self) -> set[str]:
        """Dependencies of waiting tasks that this scheduler does not hold (finished or elsewhere)."""
        return {d for e in self._waiting.values() for d in e.blocked_by if d not in self.entries}

    def held(self, statuses: Iterable[str]) -> list[Entry]:
        wanted = set(statuses)
        return [e for e in self.entries.values() if e.status in wanted]


def check_acyclic(new: Mapping[str, Sequence[str]]) -> None:
    """Rejects a dependency cycle among tasks submitted together (older tasks cannot close one)."""
    state: dict[str, int] = {}
    for root in new:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 1:
                    cycle = path[path.index(node):] + [node]
                    raise InvalidInput(
                        "The dependencies form a cycle: " + " -> ".join(public(c) for c in cycle) + ".",
                        code="dependency_cycle",
                    )
                if state.get(node) == 2:
                    continue
                state[node] = 1
                path.append(node)
            deps = [d for d in new.get(node, ()) if d in new]
            if i < len(deps):
                stack.append((node, i + 1))
                stack.append((deps[i], 0))
            else:
                state[node] = 2
                path.pop()
