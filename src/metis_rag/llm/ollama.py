"""Chat with an Ollama server over ``POST /api/chat`` (NDJSON streaming)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from ..errors import ProviderError
from . import toolcalls
from .base import ChatMessage, Completion, ToolDeclaration
from .http import (
    decode_json,
    make_client,
    malformed,
    post_json,
    require_client,
)
from .remote import HttpLLM

DEFAULT_URL = "http://127.0.0.1:11434"


class OllamaLLM(HttpLLM):
    """`stream` returns a `ChatStream` whose `completion` carries the usage once exhausted."""

    provider = "ollama"

    def _make_client(self) -> httpx.AsyncClient:
        s = self._settings
        return make_client(
            s.url or DEFAULT_URL, timeout_s=s.timeout_s, connect_timeout_s=s.connect_timeout_s
        )

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        client = require_client(self._client, self.name)
        payload = self._payload(messages, temperature, max_tokens, stream=False)
        if tools:
            payload["tools"] = [dict(t) for t in tools]
        body = await post_json(client, self.name, "/api/chat", payload, self._settings.timeout_s)
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

    async def _events(
        self, client: httpx.AsyncClient, payload: dict[str, Any]
    ) -> AsyncGenerator[str | Completion, None]:
        parts: list[str] = []
        async with self._open_stream(client, "/api/chat", payload) as response:
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
