"""What the HTTP chat backends share: one client for the backend's life, a `ChatStream` per stream.

A provider module builds its client (`_make_client`), its request body (`_payload`), and turns a
streamed reply into deltas and a final `Completion` (`_events`, opened with `_open_stream`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ..config import LLMSettings
from .base import ChatMessage, Completion
from .http import ChatStream, require_client, status_error


class HttpLLM:
    provider = ""

    def __init__(self, settings: LLMSettings) -> None:
        self.name = f"{self.provider}:{settings.model}"
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    def _make_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _payload(
        self, messages: Sequence[ChatMessage], temperature: float, max_tokens: int, *, stream: bool
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _events(
        self, client: httpx.AsyncClient, payload: dict[str, Any]
    ) -> AsyncGenerator[str | Completion, None]:
        raise NotImplementedError

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> ChatStream:
        client = require_client(self._client, self.name)
        payload = self._payload(messages, temperature, max_tokens, stream=True)
        return ChatStream(self.name, self._settings.timeout_s, self._events(client, payload))

    @asynccontextmanager
    async def _open_stream(
        self, client: httpx.AsyncClient, path: str, payload: dict[str, Any]
    ) -> AsyncIterator[httpx.Response]:
        """The streamed reply, once its status says it is not an error."""
        async with client.stream("POST", path, json=payload) as response:
            if response.status_code >= 400:
                await response.aread()
                raise status_error(self.name, response)
            yield response
