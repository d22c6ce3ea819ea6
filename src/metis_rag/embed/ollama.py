"""Embeddings from an Ollama server over ``POST /api/embed``."""

from __future__ import annotations

from typing import Any

import httpx

from ..llm.http import make_client, malformed
from .http import HttpEmbedder

DEFAULT_URL = "http://127.0.0.1:11434"


class OllamaEmbedder(HttpEmbedder):
    provider = "ollama"
    path = "/api/embed"

    def _make_client(self) -> httpx.AsyncClient:
        s = self._settings
        return make_client(
            s.url or DEFAULT_URL, timeout_s=s.timeout_s, connect_timeout_s=min(5.0, s.timeout_s)
        )

    def _rows(self, body: Any) -> list[Any]:
        if not isinstance(body, dict) or "embeddings" not in body:
            raise malformed(self.model_id, "no embeddings")
        rows: list[Any] = body["embeddings"]
        return rows
