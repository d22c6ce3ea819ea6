"""`IngestEmbedder`: one stream of model calls for the chunks of every running ingestion task.

Each task queues its document's chunk texts; `in_flight` loops embed them oldest document
first, in slices of at most `slice_texts` texts, whatever documents a slice spans. A document is
done when its last text is, so its task writes it while the model works on the next slice, and a
freed task slot starts parsing the next file meanwhile. With two calls in flight the next slice
is ready when the model's runs free up: one at a time, the model's cores idled at the end of
each slice while its last, shortest batch ran. Calls of whole documents (until 2026-12-07) were
traced at one document per call, with the model idle between calls while documents were
written and the next files parsed (docs/benchmarks.md: "ingest-90").
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Texts per model call (slice) at least: a call is a hop to a thread and back, a document's
# chunks wait for their slice, and the runs of the local model take one text each (README).
INGEST_SLICE_TEXTS = 32


@dataclass(eq=False, slots=True)
class _Queued:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray]
    taken: int = 0  # texts handed to a model call so far, in order
    done: int = 0  # texts embedded so far
    parts: dict[int, np.ndarray] = field(default_factory=dict)  # by first text


class IngestEmbedder:
    """Embeds ingestion tasks' chunks in model calls of at most `slice_texts` texts, oldest
    document first, `in_flight` calls at a time (see the module docstring). No side effects: a
    cancelled task just drops out."""

    def __init__(self, embedder: Any, slice_texts: int = 32, in_flight: int = 1) -> None:
        if slice_texts < 1 or in_flight < 1:
            raise ValueError("slice_texts and in_flight must be >= 1")
        self._embedder = embedder
        self.slice_texts = slice_texts
        self.in_flight = in_flight
        self._queue: deque[_Queued] = deque()
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self.calls = 0  # model calls made, for tests and benchmarks

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the ingest embedder is closed")
        if not texts:
            return await self._embedder.embed(texts)  # type: ignore[no-any-return]
        item = _Queued(texts, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._loops = [loop for loop in self._loops if not loop.done()]
        while len(self._loops) < self.in_flight:
            self._loops.append(asyncio.create_task(self._run(), name="metis-ingest-embedder"))
        try:
            return await item.future
        finally:
            if not item.future.done():  # the caller was cancelled: do not embed the rest
                item.future.cancel()

    async def _run(self) -> None:
        while self._queue:
            picked: list[tuple[_Queued, int, int]] = []  # (document, first text, last text)
            room = self.slice_texts
            for item in self._queue:
                if room == 0:
                    break
                take = min(room, len(item.texts) - item.taken)
                if item.future.done() or take == 0:
                    continue
                picked.append((item, item.taken, item.taken + take))
                item.taken += take
                room -= take
            if not picked:  # the rest is in another loop's call, or cancelled
                self._drop_done()
                return
            texts = [t for item, a, b in picked for t in item.texts[a:b]]
            try:
                matrix = await self._embedder.embed(texts)
            except Exception as exc:
                for item, _, _ in picked:
                    if not item.future.done():
                        item.future.set_exception(exc)
                self._drop_done()
                continue
            self.calls += 1
            start = 0
            for item, a, b in picked:
                item.parts[a] = matrix[start:start + b - a]
                start += b - a
                item.done += b - a
                if item.done == len(item.texts) and not item.future.done():
                    item.future.set_result(np.vstack([item.parts[k] for k in sorted(item.parts)]))
            self._drop_done()

    def _drop_done(self) -> None:
        self._queue = deque(item for item in self._queue if not item.future.done())

    async def close(self) -> None:
        """Refuses new texts and lets the queued ones finish."""
        self._closed = True
        await asyncio.gather(*self._loops, return_exceptions=True)
