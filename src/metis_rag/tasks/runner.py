"""Running one attempt of a task, the same way on every backend: handler registry, context,
timeout, error classification, retry delay and resource figures."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import random
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidInput, MetisError, PermanentError
from ..observability import tracing

if TYPE_CHECKING:  # the app's components, for type checking only: they import this package
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from ..cache.levels import Caches
    from ..config import Settings
    from ..ingest.pipeline import Ingestor
    from ..store.index import IndexFlusher
    from ..store.vectors import VectorStore
    from ..tenancy.keys import KeyRing
    from .base import TaskBackend
    from .ingest_embedder import IngestEmbedder

Handler = Callable[["TaskContext"], Any]
ProgressSink = Callable[[str, float, str | None], None]
BlobLoader = Callable[[str], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    fn: Handler
    timeout_s: float | None
    is_async: bool


class HandlerRegistry:
    """Task handlers by type. An `async def` runs on the event loop; a plain `def` in a thread."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerInfo] = {}

    def register(self, type: str, fn: Handler, *, timeout_s: float | None = None) -> None:
        self._handlers[type] = HandlerInfo(fn, timeout_s, inspect.iscoroutinefunction(fn))

    def __contains__(self, type: str) -> bool:
        return type in self._handlers

    def get(self, type: str) -> HandlerInfo:
        try:
            return self._handlers[type]
        except KeyError:
            raise InvalidInput(
                f"Unknown task type {type!r}; known: {', '.join(sorted(self._handlers))}.",
                code="unknown_task_type",
            ) from None

    @property
    def types(self) -> list[str]:
        return sorted(self._handlers)


class HandlerServices(Protocol):
    """The part of `metis_rag.services.Services` that task handlers use."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> AsyncEngine: ...
    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...
    @property
    def vectors(self) -> VectorStore: ...
    @property
    def ingestor(self) -> Ingestor: ...
    @property
    def ingest_embedder(self) -> IngestEmbedder: ...
    @property
    def index_flusher(self) -> IndexFlusher: ...
    @property
    def caches(self) -> Caches | None: ...
    @property
    def keyring(self) -> KeyRing: ...
    @property
    def tasks(self) -> TaskBackend: ...


@dataclass(slots=True)
class TaskContext:
    """What a handler sees: its task, a progress reporter, the upload bytes, and the app."""

    task_id: str
    type: str
    params: dict[str, Any]
    attempt: int
    services: HandlerServices
    _progress: ProgressSink
    _blob: BlobLoader
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancelled: threading.Event = field(default_factory=threading.Event)
    used_blob: bool = False  # its blob is deleted when the task completes

    def progress(self, percent: float, message: str | None = None) -> None:
        """Reports progress (0-100) and a message (500 characters kept; a NUL, which
        PostgreSQL text cannot hold, becomes U+FFFD); safe to call from a handler's thread."""
        percent = max(0.0, min(100.0, float(percent)))
        if message:
            message = message[:500].replace("\x00", "\ufffd")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._progress(self.task_id, percent, message)
        else:
            self._loop.call_soon_threadsafe(self._progress, self.task_id, percent, message)

    async def blob(self) -> bytes:
        self.used_blob = True
        data = await self._blob(self.task_id)
        if data is None:
            raise PermanentError(f"Task {self.task_id} has no stored upload.", code="upload_missing")
        return data

    def check(self) -> None:
        """For thread handlers: raises if the task was cancelled or timed out meanwhile."""
        if self.cancelled.is_set():
            raise asyncio.CancelledError()


@dataclass(slots=True)
class Outcome:
    status: str  # completed | failed
    result: Any = None
    error: dict[str, str] | None = None
    retryable: bool = False
    run_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    used_blob: bool = False


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


async def execute(registry: HandlerRegistry, ctx: TaskContext, timeout_s: float) -> Outcome:
    """Runs one attempt. CancelledError propagates (the caller knows whether it asked for it)."""
    # A trace of its own: the process that starts a task is often not the one that asked for it
    # (a worker, or a pump driven by another task's end).
    with tracing.span(f"task {ctx.type}", {"metis.task.id": ctx.task_id,
                                           "metis.task.attempt": ctx.attempt},
                      root=True) as current:
        outcome = await _execute(registry, ctx, timeout_s)
        if current is not None:
            current.set_attribute("metis.task.outcome", outcome.status)
            if outcome.error:
                current.set_attribute("metis.task.error", outcome.error["code"])
        return outcome


async def _execute(registry: HandlerRegistry, ctx: TaskContext, timeout_s: float) -> Outcome:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        info = registry.get(ctx.type)  # a process without that handler fails the task, once
        async with asyncio.timeout(timeout_s):
            if info.is_async:
                result = await info.fn(ctx)
            else:
                call = functools.partial(contextvars.copy_context().run, info.fn, ctx)
                try:
                    result = await asyncio.get_running_loop().run_in_executor(None, call)
                except asyncio.CancelledError:
                    ctx.cancelled.set()  # a thread cannot be interrupted: ask it to stop
                    raise
        outcome = Outcome("completed", result=_jsonable(result))
    except TimeoutError:
        outcome = Outcome("failed", error={"code": "timeout",
                                           "message": f"The task ran longer than {timeout_s:g} s."},
                          retryable=True)
    except (PermanentError, InvalidInput) as exc:
        outcome = Outcome("failed", error={"code": exc.code, "message": exc.message})
    except MetisError as exc:
        outcome = Outcome("failed", error={"code": exc.code, "message": exc.message},
                          retryable=exc.status >= 500)
    except Exception as exc:
        outcome = Outcome("failed", error={"code": "handler_error",
                                           "message": f"{type(exc).__name__}: {exc}"[:500]},
                          retryable=True)
    outcome.run_s = time.perf_counter() - t0
    outcome.cpu_s = time.process_time() - cpu0
    outcome.peak_rss_bytes = peak_rss_bytes()
    outcome.used_blob = ctx.used_blob
    return outcome


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def retry_delay_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random."""
    step = min(max_s, base_s * 2 ** max(0, attempt - 1))
    return float(step / 2 + rng.uniform(0, step / 2))
