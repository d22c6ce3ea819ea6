"""What the HTTP embedders share: one client, a dimension probe, batches posted one at a time.

A provider module says where it posts (`path`), how it builds its client and how its reply
holds the vectors (`_rows`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from ..config import EmbedSettings
from ..llm.http import post_json, require_client, unit_rows
from . import packaged


class HttpEmbedder:
    """`dim` is learnt from a probe request in `start()`."""

    provider = ""
    path = ""

    def __init__(self, settings: EmbedSettings) -> None:
        self.model_id = f"{self.provider}:{settings.model}"
        self.dim = 0
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    def _make_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _rows(self, body: Any) -> list[Any]:
        """The reply's vectors, in the order of the texts sent."""
        raise NotImplementedError

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = self._make_client()
        try:
            self.dim = (await self._embed_batch(["dimension probe"])).shape[1]
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        require_client(self._client, self.model_id)
        size = self._settings.batch_size
        # One batch at a time: concurrency comes from concurrent callers, not from one call.
        batches = [await self._embed_batch(texts[i : i + size]) for i in range(0, len(texts), size)]
        return np.concatenate(batches) if batches else np.zeros((0, self.dim), np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return packaged.count_tokens(list(texts))

    @property
    def counting_tokenizer(self) -> str | None:
        return packaged.tokenizer_file()

    async def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        client = require_client(self._client, self.model_id)
        payload = {"model": self._settings.model, "input": list(texts)}
        body = await post_json(client, self.model_id, self.path, payload, self._settings.timeout_s)
        return unit_rows(self.model_id, self._rows(body), len(texts), self.dim)
