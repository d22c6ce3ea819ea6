"""Stopping a SQLite statement at one point, every run: a SQL function `hold(x)` that blocks in
the connection's thread until the test releases it, and a pause of the cyclic garbage collector
(it closes abandoned cursors at a moment of its own choosing)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class Hold:
    """`hold(x)` in SQL returns x once `release` is set; `entered` says a statement is in it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, value: Any) -> Any:
        self.entered.set()
        self.release.wait(10)
        return value

    def install(self, engine: AsyncEngine) -> None:
        """On every connection the engine opens from now on."""
        @event.listens_for(engine.sync_engine, "connect")
        def add_hold(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.create_function("hold", 1, self)


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
