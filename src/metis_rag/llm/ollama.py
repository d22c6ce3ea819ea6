"""Chat with an Ollama server over ``POST /api/chat`` (NDJSON streaming)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from ..config import LLMSettings
from ..errors import ProviderError
from . import toolcalls
from .base import ChatMessage, Completion, ToolDeclaration
from .http import (
    ChatStream,
    decode_json,
    make_client,
    malformed,
    provider_errors,
    require_client,
    status_error,
)

DEFAULT_URL = "http://127.0.0.1:11434"


class OllamaLLM:
    """`stream` returns a `ChatStream` whose `completion` carries the usage once exhausted."""

    def __init__(self, settings: LLMSettings) -> None:
        self.name = f"ollama:{settings.model}"
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            s = self._settings
            self._client = make_client(
                s.url or DEFAULT_URL, timeout_s=s.timeout_s, connect_timeout_s=s.connect_timeout_s
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        client = require_client(self._client, self.name)
        payload = self._payload(messages, temperature, max_tokens, stream=False)
        if tools:
            payload["tools"] = [dict(t) for t in tools]
        timeout_s = self._settings.timeout_s
        with provider_errors(self.name, timeout_s):
            async with asyncio.timeout(timeout_s):
                response = await client.post("/api/chat", json=payload)
        if response.status_code >= 400:
            raise status_error(self.name, response)
        body = decode_json(self.name, response.content)
        try:
            text = body["message"]["content"]
        except (KeyError, TypeError) as exc:
            raise malformed(self.name, "no message.content") from exc
        if not isinstance(text, str):
            raise malformed(self.name, "message.content is not text")
        done = self._completion(text, body)
        if tools:
            done.tool_calls = toolcalls.from_ollama(body["message"].get("tool_calls"))
        return done

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> ChatStream:
        client = require_client(self._client, self.name)
        payload = self._payload(messages, temperature, max_tokens, stream=True)
        return ChatStream(self.name, self._settings.timeout_s, self._events(client, payload))

    async def _events(
        self, client: httpx.AsyncClient, payload: dict[str, Any]
    ) -> AsyncGenerator[str | Completion, None]:
        parts: list[str] = []
        async with client.stream("POST", "/api/chat", json=payload) as response:
            if response.status_code >= 400:
                await response.aread()
                raise status_error(self.name, response)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = decode_json(self.name, line)
                if not isinstance(event, dict):
                    raise malformed(self.name, "a stream line is not an object")
                if "error" in event:
                    raise ProviderError(f"{self.name} failed mid-stream: {event['error']}")
                message = event.get("message") or {}
                delta = message.get("content", "") if isinstance(message, dict) else None
                if not isinstance(delta, str):
                    raise malformed(self.name, "message.content is not text")
                if delta:
                    parts.append(delta)
                    yield delta
                if event.get("done"):
                    yield self._completion("".join(parts), event)
                    return
        raise ProviderError(f"{self.name} ended the stream before it was done")

    def _payload(
        self, messages: Sequence[ChatMessage], temperature: float, max_tokens: int, *, stream: bool
    ) -> dict[str, Any]:
        return {
            "model": self._settings.model,
            "messages": [toolcalls.ollama_message(m) for m in messages],
            "stream": stream,
            "options": {"temperature": temperature, "num_predict": max_tokens},
        }

    def _completion(self, text: str, final: dict[str, Any]) -> Completion:
        # Ollama leaves out prompt_eval_count when the whole prompt came from its cache.
        try:
            prompt_tokens = int(final.get("prompt_eval_count") or 0)
            completion_tokens = int(final.get("eval_count") or 0)
        except (TypeError, ValueError) as exc:
            raise malformed(self.name, "token counts are not numbers") from exc
        return Completion(
            text=text,
            model=str(final.get("model") or self._settings.model),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            extra={"finish_reason": final.get("done_reason", "stop")},
        )
