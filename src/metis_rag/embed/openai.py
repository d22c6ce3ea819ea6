"""Embeddings from any OpenAI-compatible ``POST /v1/embeddings``; `url` is read as by `OpenAILLM`."""

from __future__ import annotations

from typing import Any

import httpx

from ..llm.http import make_client, malformed, openai_base_url
from .http import HttpEmbedder


class OpenAIEmbedder(HttpEmbedder):
    provider = "openai"
    path = "/embeddings"

    def _make_client(self) -> httpx.AsyncClient:
        s = self._settings
        return make_client(
            openai_base_url(s.url),
            timeout_s=s.timeout_s,
            connect_timeout_s=min(5.0, s.timeout_s),
            api_key=s.api_key,
        )

    def _rows(self, body: Any) -> list[Any]:
        # The API gives each vector its input index; do not trust the list order.
        try:
            data = sorted(body["data"], key=lambda d: d["index"])
            return [d["embedding"] for d in data]
        except (KeyError, TypeError) as exc:
            raise malformed(self.model_id, "no data[].embedding with an index") from exc
