"""`LoopPool`: the Celery pool of `metis worker`, running each task on the worker's asyncio loop.

Celery's threads pool hands a message to a pool thread, which handed it on to the loop that
holds the worker's services and then slept until the loop handed it back: two thread wake-ups
per task beyond Celery's own, each of them waiting for a core on a busy machine. This pool
starts Celery's trace of the task on the loop straight from the consumer thread; the task body
only starts the run there, and the message is acknowledged (Celery's callback) when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import MissingDependency

try:
    from celery.concurrency.base import BasePool
except ImportError as exc:  # the tasks extra; `metis worker` is the only user of this module
    raise MissingDependency("celery", "tasks") from exc

log = logging.getLogger("metis.tasks")
STOP_WAIT_S = 60.0


class LoopRuntime(Protocol):
    """What the pool needs of `worker.WorkerRuntime`."""

    loop: asyncio.AbstractEventLoop

    def take_started(self) -> asyncio.Task[None] | None:
        """The run that the task body just started on the loop (None if it started none)."""


class LoopPool(BasePool):  # type: ignore[misc]  # celery ships no types
    """Runs Celery's trace of each message on `runtime.loop`; `limit` runs at once at most
    (Celery reserves no more messages than that)."""

    runtime: LoopRuntime  # set on the subclass that `bind` makes
    signal_safe = False
    body_can_be_buffer = True

    @classmethod
    def bind(cls, runtime: LoopRuntime) -> type[LoopPool]:
        """A pool class for one worker process's runtime (Celery instantiates it itself)."""
        return type(cls.__name__, (cls,), {"runtime": runtime})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = 0
        self._idle = threading.Condition()

    def on_apply(self, target: Callable[..., Any], args: tuple[Any, ...] | None = None,
                 kwargs: dict[str, Any] | None = None, callback: Callable[[Any], None] | None = None,
                 accept_callback: Callable[[int, float], None] | None = None, **_: Any) -> None:
        with self._idle:
            self._in_flight += 1
        self.runtime.loop.call_soon_threadsafe(
            self._start, target, args or (), kwargs or {}, callback, accept_callback)

    def _start(self, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               callback: Callable[[Any], None] | None,
               accept_callback: Callable[[int, float], None] | None) -> None:
        try:
            if accept_callback is not None:
                accept_callback(os.getpid(), time.monotonic())
            # Celery's trace: decodes the message and calls the task body, which starts the run
            # on this loop and returns; failures of the body itself come back in `outcome`.
            outcome = target(*args, **kwargs)
        except BaseException:
            self._done()
            raise
        started = self.runtime.take_started()
        if started is None:
            self._finish(callback, outcome)
            return
        started.add_done_callback(lambda run: self._ended(run, callback, outcome))

    def _ended(self, run: asyncio.Task[None], callback: Callable[[Any], None] | None,
               outcome: Any) -> None:
        if run.cancelled():
            # The worker is stopping mid-run: no acknowledgement, so the broker re-delivers the
            # message and the task runs again (its claim is taken over).
            self._done()
            return
        exc = run.exception()
        if exc is not None:  # the database was away: the server's sweep re-dispatches the task
            log.warning("task message not run: %s", exc)
        self._finish(callback, outcome)

    def _finish(self, callback: Callable[[Any], None] | None, outcome: Any) -> None:
        try:
            if callback is not None:
                callback(outcome)  # acknowledges the message (acks_late)
        except Exception:
            log.exception("acknowledging a task message failed")
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def on_stop(self) -> None:
        # A warm shutdown lets the runs in progress end (and be acknowledged), as the threads
        # pool did by joining its threads.
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=STOP_WAIT_S)

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info.update({"max-concurrency": self.limit, "in-flight": self._in_flight})
        return info
