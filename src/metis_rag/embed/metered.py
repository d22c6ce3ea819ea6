"""`MeteredEmbedder`: reports each real model call to `Metrics`. Put it directly around the
backend, under any cache, so that only embeddings the model computed are counted."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..observability import tracing
from .base import Embedder, WrappedEmbedder

if TYPE_CHECKING:
    from ..observability.metrics import Metrics


class MeteredEmbedder(WrappedEmbedder):
    def __init__(self, inner: Embedder, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return await self.inner.embed(texts)
        started = time.perf_counter()
        with tracing.span("embed", {"metis.embed.model": self.model_id,
                                    "metis.embed.texts": len(texts)}):
            vectors = await self.inner.embed(texts)
        self._metrics.observe_embed(self.model_id, len(texts), time.perf_counter() - started)
        return vectors
