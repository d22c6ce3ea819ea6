"""Recent alerts: every warning or error logged, plus threshold rules that log when they fire.

`AlertLog` is a logging handler, so anything in Metis that logs a warning (a slow query, a
degraded answer, an unreachable cache tier, an unhandled error) shows on the dashboard without
knowing about it. `AlertRules` turn the rolling window's figures into such warnings, once when
a rule starts firing and once (at info level) when it recovers. `Crossings` is the
once-per-crossing bookkeeping both they and the task engine's resource monitor use.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .logs import event_of

log = logging.getLogger("metis.alerts")


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class AlertLog(logging.Handler):
    """Keeps the last `max_alerts` warning-or-worse records; attach it to the root logger."""

    def __init__(self, max_alerts: int = 50, wall_clock: Callable[[], float] = time.time,
                 on_event: Callable[[str], None] | None = None) -> None:
        super().__init__(level=logging.WARNING)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self.wall_clock = wall_clock
        self._on_event = on_event

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event, fields = event_of(record)
            level = record.levelname.lower()
            self._alerts.append({
                "at": datetime.fromtimestamp(self.wall_clock(), UTC).isoformat(timespec="seconds"),
                "level": level,
                "logger": record.name,
                "event": event[:500],
                "fields": {k: _jsonable(v) for k, v in fields.items()},
            })
            if self._on_event is not None:
                self._on_event(level)
        except Exception:  # a handler must never break the code that logged
            self.handleError(record)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self._alerts))[:limit]

    def attach(self) -> None:
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)


class Crossings:
    """Which named limits are crossed, so that each crossing alerts once: `enter` is True only
    on a name's first breach, `leave` re-arms it (True if it was crossed)."""

    def __init__(self) -> None:
        self.firing: set[str] = set()

    def enter(self, name: str) -> bool:
        if name in self.firing:
            return False
        self.firing.add(name)
        return True

    def leave(self, name: str) -> bool:
        if name not in self.firing:
            return False
        self.firing.discard(name)
        return True


class AlertRules(Crossings):
    """Threshold rules over the last minute's headline figures and the task queue."""

    def __init__(self, p95_ms: float, error_ratio: float, queue_depth: int,
                 min_requests: int = 10) -> None:
        super().__init__()
        self.p95_ms = p95_ms
        self.error_ratio = error_ratio
        self.queue_depth = queue_depth
        self.min_requests = min_requests

    def check(self, headline: dict[str, Any], queued: int | None) -> None:
        enough = headline["requests"] >= self.min_requests
        p95 = headline["p95_ms"] or 0.0
        self._rule("latency_p95", enough and p95 > self.p95_ms,
                   f"p95 latency {p95:.0f} ms over the last minute is above {self.p95_ms:g} ms")
        ratio = headline["error_ratio"]
        self._rule("error_ratio", enough and ratio > self.error_ratio,
                   f"{ratio:.1%} of requests failed (5xx) over the last minute, "
                   f"above {self.error_ratio:.1%}")
        self._rule("queue_depth", queued is not None and queued > self.queue_depth,
                   f"{queued} tasks are queued, more than {self.queue_depth}")

    def _rule(self, name: str, breached: bool, message: str) -> None:
        if breached and self.enter(name):
            log.warning("alert: %s", message, extra={"alert": name})
        elif not breached and self.leave(name):
            log.info("alert resolved: %s", name, extra={"alert": name})
