"""`CachedEmbedder`: an Embedder that asks the embedding cache first and embeds only misses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..cache.tiered import TieredCache
from .base import Embedder, WrappedEmbedder


class CachedEmbedder(WrappedEmbedder):
    """Keys are model id + text hash, so re-ingesting unchanged chunks embeds nothing and a
    repeated question skips the model. Batch get and set: one round trip per call."""

    def __init__(self, inner: Embedder, cache: TieredCache) -> None:
        super().__init__(inner)
        self._cache = cache

    def _key(self, text: str) -> str:
        return f"{self.model_id}:{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        found = await self._cache.get_many(list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first_text = dict(zip(keys, texts, strict=True))
            fresh = await self.inner.embed([first_text[k] for k in missing])
            new = {k: fresh[i] for i, k in enumerate(missing)}
            await self._cache.set_many(new)
            found.update(new)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([np.asarray(found[k], dtype=np.float32) for k in keys])
