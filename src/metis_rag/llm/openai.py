"""Chat with any OpenAI-compatible server over ``POST /v1/chat/completions`` (SSE streaming)."""

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
    openai_base_url,
    post_json,
    require_client,
)
from .remote import HttpLLM


class OpenAILLM(HttpLLM):
    """`stream` returns a `ChatStream` whose `completion` carries the usage once exhausted.

    `settings.url` is the API base (``https://api.openai.com/v1``); a bare ``http://host:port``
    gets ``/v1`` appended. Streams ask for ``stream_options.include_usage``.
    """

    provider = "openai"

    def _make_client(self) -> httpx.AsyncClient:
        s = self._settings
        return make_client(
            openai_base_url(s.url),
            timeout_s=s.timeout_s,
            connect_timeout_s=s.connect_timeout_s,
            api_key=s.api_key,
        )

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        client = require_client(self._client, self.name)
        payload = self._payload(messages, temperature, max_tokens, stream=False)
        if tools:
            payload["tools"] = [dict(t) for t in tools]
        body = await post_json(
            client, self.name, "/chat/completions", payload, self._settings.timeout_s
        )
        try:
            choice = body["choices"][0]
            # content is null when the model refused or only called tools.
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise malformed(self.name, "no choices[0].message") from exc
        if not isinstance(text, str):
            raise malformed(self.name, "message.content is not text")
        done = self._completion(text, body, choice.get("finish_reason"), body.get("usage"))
        if tools:
            done.tool_calls = toolcalls.from_openai(choice["message"].get("tool_calls"))
        return done

    async def _events(
        self, client: httpx.AsyncClient, payload: dict[str, Any]
    ) -> AsyncGenerator[str | Completion, None]:
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        last: dict[str, Any] = {}
        async with self._open_stream(client, "/chat/completions", payload) as response:
            # Each event of this API is a single `data:` line; other SSE fields are unused.
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield self._completion("".join(parts), last, finish_reason, usage)
                    return
                last = self._event(data)
                usage = last.get("usage") or usage
                for delta, reason in self._choices(last):
                    finish_reason = reason or finish_reason
                    if delta:
                        parts.append(delta)
                        yield delta
        # Some compatible servers close without [DONE]; a finish_reason says the answer is whole.
        if finish_reason is None:
            raise ProviderError(f"{self.name} ended the stream before it was done")
        yield self._completion("".join(parts), last, finish_reason, usage)

    def _event(self, data: str) -> dict[str, Any]:
        event = decode_json(self.name, data)
        if not isinstance(event, dict):
            raise malformed(self.name, "a stream event is not an object")
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(f"{self.name} failed mid-stream: {message}")
        return event

    def _choices(self, event: dict[str, Any]) -> list[tuple[str, str | None]]:
        try:
            pairs = [
                (c["delta"].get("content") or "", c.get("finish_reason"))
                for c in event.get("choices") or []
                if c.get("index", 0) == 0
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise malformed(self.name, "a stream choice has no delta") from exc
        if any(not isinstance(delta, str) for delta, _ in pairs):
            raise malformed(self.name, "delta.content is not text")
        return pairs

    def _payload(
        self, messages: Sequence[ChatMessage], temperature: float, max_tokens: int, *, stream: bool
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._settings.model,
            "messages": [toolcalls.openai_message(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _completion(
        self, text: str, body: dict[str, Any], finish_reason: Any, usage: Any
    ) -> Completion:
        usage = usage if isinstance(usage, dict) else {}
        try:
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError) as exc:
            raise malformed(self.name, "usage counts are not numbers") from exc
        return Completion(
            text=text,
            model=str(body.get("model") or self._settings.model),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            extra={"finish_reason": finish_reason or "stop", "id": body.get("id")},
        )
