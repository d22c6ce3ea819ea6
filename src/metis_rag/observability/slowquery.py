"""Times every SQL statement through SQLAlchemy engine events; logs and counts the slow ones.

A slow statement is logged with its SQL (placeholders, not values) and the *shape* of its
parameters: how many, of which types, how many rows for an executemany. Never the values:
they are users' questions and documents.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .metrics import Metrics

log = logging.getLogger("metis.db")

_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "PRAGMA", "CREATE",
                         "DROP", "ALTER", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_SPACES = re.compile(r"\s+")
_START_KEY = "metis_query_started"


def operation_of(statement: str) -> str:
    head = statement.lstrip()[:12].split(None, 1)
    word = head[0].upper() if head else ""
    return word if word in _OPERATIONS else "OTHER"


def _type_name(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"bytes[{len(value)}]"
    return type(value).__name__


def parameter_shape(parameters: Any, executemany: bool) -> dict[str, Any]:
    """Counts and types of the parameters; names of named ones; never a value."""
    if executemany and isinstance(parameters, Sequence) and not isinstance(parameters, str):
        rows = list(parameters)
        first = parameter_shape(rows[0], False) if rows else {}
        return {"rows": len(rows), **first}
    if isinstance(parameters, Mapping):
        return {"count": len(parameters),
                "types": {str(k): _type_name(v) for k, v in parameters.items()}}
    if isinstance(parameters, Sequence) and not isinstance(parameters, str):
        return {"count": len(parameters), "types": [_type_name(v) for v in parameters]}
    return {"count": 0}


def watch_queries(engine: Engine, metrics: Metrics, slow_ms: float) -> Callable[[], None]:
    """Installs the listeners on a (sync) engine; returns the function that removes them."""
    slow_s = slow_ms / 1000

    def before(conn: Any, _cursor: Any, _statement: str, _parameters: Any, _context: Any,
               _executemany: bool) -> None:
        conn.info.setdefault(_START_KEY, []).append(time.perf_counter())

    def after(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
              executemany: bool) -> None:
        started = conn.info.get(_START_KEY)
        if not started:
            return  # listeners were installed while this statement ran
        seconds = time.perf_counter() - started.pop()
        operation = operation_of(statement)
        slow = seconds >= slow_s
        metrics.observe_query(operation, seconds, slow)
        if slow:
            log.warning(
                "slow query: %.1f ms (over %g ms)", seconds * 1000, slow_ms,
                extra={"duration_ms": round(seconds * 1000, 2), "operation": operation,
                       "statement": _SPACES.sub(" ", statement).strip()[:500],
                       "parameters": parameter_shape(parameters, executemany)},
            )

    def failed(context: Any) -> None:
        # An error skips after_cursor_execute: drop the pending start so timings stay paired.
        conn = getattr(context, "connection", None)
        if conn is not None and conn.info.get(_START_KEY):
            conn.info[_START_KEY].pop()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)

    def remove() -> None:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "handle_error", failed)

    return remove
