"""`IngestEmbedder`: one stream of model calls for the chunks of every running ingestion task.

Each task queues its document's chunk texts; one loop embeds them oldest document first, in
slices of at most `slice_texts` texts, whatever documents a slice spans. A document is done
when its last text is, so its task writes it while the model works on the next slice, and a
freed task slot starts parsing the next file meanwhile. Calls of whole documents (until
2026-12-07) were traced at one document per call, with the model idle between calls while
documents were written and the next files parsed (README, Benchmarks: "ingest-90").
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False, slots=True)
class _Queued:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray]
    done: int = 0  # texts embedded so far, in order
    parts: list[np.ndarray] = field(default_factory=list)


class IngestEmbedder:
    """Embeds ingestion tasks' chunks in model calls of at most `slice_texts` texts, oldest
    document first (see the module docstring). No side effects: a cancelled task just drops out."""

    def __init__(self, embedder: Any, slice_texts: int = 32) -> None:
        if slice_texts < 1:
            raise ValueError("slice_texts must be >= 1")
        self._embedder = embedder
        self.slice_texts = slice_texts
        self._queue: deque[_Queued] = deque()
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self.calls = 0  # model calls made, for tests and benchmarks

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the ingest embedder is closed")
        if not texts:
            return await self._embedder.embed(texts)  # type: ignore[no-any-return]
        item = _Queued(texts, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="metis-ingest-embedder")
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
                if item.future.done():
                    continue
                take = min(room, len(item.texts) - item.done)
                picked.append((item, item.done, item.done + take))
                room -= take
            if not picked:
                self._queue.clear()
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
                item.parts.append(matrix[start:start + b - a])
                start += b - a
                item.done = b
                if item.done == len(item.texts) and not item.future.done():
                    item.future.set_result(np.vstack(item.parts))
            self._drop_done()

    def _drop_done(self) -> None:
        self._queue = deque(item for item in self._queue if not item.future.done())

    async def close(self) -> None:
        """Refuses new texts and lets the queued ones finish."""
        self._closed = True
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
