"""Embeddings from an Ollama server over ``POST /api/embed``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import numpy as np

from ..config import EmbedSettings
from ..llm.http import (
    decode_json,
    make_client,
    malformed,
    provider_errors,
    require_client,
    status_error,
    unit_rows,
)
from . import packaged

DEFAULT_URL = "http://127.0.0.1:11434"


class OllamaEmbedder:
    """`dim` is learnt from a probe request in `start()`."""

    def __init__(self, settings: EmbedSettings) -> None:
        self.model_id = f"ollama:{settings.model}"
        self.dim = 0
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        s = self._settings
        self._client = make_client(
            s.url or DEFAULT_URL, timeout_s=s.timeout_s, connect_timeout_s=min(5.0, s.timeout_s)
        )
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
        timeout_s = self._settings.timeout_s
        payload = {"model": self._settings.model, "input": list(texts)}
        with provider_errors(self.model_id, timeout_s):
            async with asyncio.timeout(timeout_s):
                response = await client.post("/api/embed", json=payload)
        if response.status_code >= 400:
            raise status_error(self.model_id, response)
        body = decode_json(self.model_id, response.content)
        if not isinstance(body, dict) or "embeddings" not in body:
            raise malformed(self.model_id, "no embeddings")
        return unit_rows(self.model_id, body["embeddings"], len(texts), self.dim)
