"""A readers-writer lock for threads (the standard library has none)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class RWLock:
    """Many readers or one writer; readers already waiting go before the writer's next slice."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._readers_waiting = 0
        self._writer = False
        self._writers_waiting = 0

    def try_acquire_read(self) -> bool:
        # Fails while a writer waits too, so that back-to-back searches cannot starve it.
        with self._cond:
            if self._writer or self._writers_waiting:
                return False
            self._readers += 1
            return True

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            self._cond.wait_for(lambda: not self._writer)
            self._readers_waiting -= 1
            self._readers += 1
        try:
            yield
        finally:
            self.release_read()

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(
                lambda: not (self._writer or self._readers or self._readers_waiting)
            )
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
