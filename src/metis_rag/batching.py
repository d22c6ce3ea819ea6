"""Micro-batching: concurrent callers' items gathered into one call of a batch function.

`MicroBatcher` holds items until `max_batch` are waiting or the oldest has waited `max_wait_ms`,
then runs them as one batch. With `max_in_flight=1` (the default, right for a CPU-bound model
that already uses every core) the next batch is cut only when the running one finishes, so
batches grow by themselves under load. `BatchingEmbedder` routes single-text embeds (queries)
through one, so 32 users asking at once cost one model call instead of 32.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from .embed.base import Embedder, WrappedEmbedder

T = TypeVar("T")
R = TypeVar("R")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
BatchObserver = Callable[[int, float], None]
"""Called after each batch with its size and its duration in seconds."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    batches: int
    items: int
    failed_batches: int
    largest_batch: int

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch` on lists of items submitted one at a time by concurrent callers.

    `run_batch(items)` returns one result per item, in order; a result that is an exception
    instance is raised to that item's caller only. If `run_batch` itself raises, every caller
    of that batch gets the error. `clock` and `sleep` time the batch window (tests pass a fake).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_in_flight: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch >= 1, max_in_flight >= 1 and max_wait_ms >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._sleep = sleep
        self._on_batch = on_batch
        self._pending: list[_Waiting[T, R]] = []
        self._grew = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._batches = self._items = self._failed = self._largest = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._items, self._failed, self._largest)

    async def submit(self, item: T) -> R:
        """The result for `item`, computed in a batch with whatever else arrives meanwhile."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._max_wait_s == 0 and not self._pending:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._max_in_flight)
            if not self._slots.locked():
                # Nothing to wait for and a free slot: a lone item runs now, in its caller's
                # task, without the two task hand-offs of a collected batch.
                await self._slots.acquire()
                await self._execute([_Waiting(item, future, self._clock())])
                return await future
        self._pending.append(_Waiting(item, future, self._clock()))
        self._grew.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect())
        return await future

    async def close(self) -> None:
        """Refuses new items, runs those already submitted, and waits for running batches."""
        self._closed = True
        self._grew.set()  # wakes a collector waiting out its window: close does not wait it
        if self._collector is not None:
            await self._collector
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _collect(self) -> None:
        """Cuts batches while items wait; ends when none do (the next `submit` restarts it)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_in_flight)
        while self._pending:
            await self._slots.acquire()
            try:
                await self._fill()
                batch = [w for w in self._pending[: self.max_batch] if not w.future.done()]
                del self._pending[: self.max_batch]
            except BaseException:
                self._slots.release()
                raise
            if not batch:  # every caller in it was cancelled
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self) -> None:
        """Returns once a full batch waits or the oldest item has waited `max_wait_ms`."""
        deadline = self._pending[0].arrived + self._max_wait_s
        while len(self._pending) < self.max_batch and not self._closed:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._grew.clear()
            grew = asyncio.ensure_future(self._grew.wait())
            timer = asyncio.ensure_future(self._sleep(remaining))
            try:
                await asyncio.wait((grew, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                grew.cancel()
                timer.cancel()

    async def _execute(self, batch: list[_Waiting[T, R]]) -> None:
        started = self._clock()
        try:
            results = await self._run_batch([w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:
            self._failed += 1
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        finally:
            self._record(len(batch), self._clock() - started)
            assert self._slots is not None
            self._slots.release()
        for w, result in zip(batch, results, strict=True):
            if w.future.done():  # its caller was cancelled while the batch ran
                continue
            if isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)

    def _record(self, size: int, seconds: float) -> None:
        self._batches += 1
        self._items += size
        self._largest = max(self._largest, size)
        if self._on_batch is not None:
            self._on_batch(size, seconds)


class BatchingEmbedder(WrappedEmbedder):
    """An `Embedder` that gathers concurrent single-text embeds into batched model calls.

    Multi-text calls (ingestion) are already batches and go straight to `inner`. Identical
    texts in one batch are embedded once.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_in_flight: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_batch: BatchObserver | None = None,
    ) -> None:
        super().__init__(inner)
        self._batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._embed_unique,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_in_flight=max_in_flight,
            clock=clock,
            sleep=sleep,
            on_batch=on_batch,
        )

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    async def close(self) -> None:
        await self._batcher.close()
        await self.inner.close()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) != 1:
            return await self.inner.embed(texts)
        row = await self._batcher.submit(texts[0])
        return row.reshape(1, -1)

    async def _embed_unique(self, texts: list[str]) -> list[np.ndarray]:
        index: dict[str, int] = {}
        for text in texts:
            index.setdefault(text, len(index))
        vectors = await self.inner.embed(list(index))
        return [vectors[index[text]] for text in texts]
