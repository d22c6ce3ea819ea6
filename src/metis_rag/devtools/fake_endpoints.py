"""The fake LLM's routes: Ollama (``/api/*``) and OpenAI (``/v1/*``) chat and embeddings, and
the ``/_config``, ``/_stats``, ``/_reset`` and ``/_tools`` controls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import fake_tools
from .fake_content import count_prompt_tokens, fake_answer, hashed_embeddings, word_tokens
from .fake_state import FakeConfig, FakeState, error_response, json_response


class _CountRequests:
    """Counts protocol requests and how many are in flight, streams included."""

    def __init__(self, app: ASGIApp, state: FakeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_"):
            return await self.app(scope, receive, send)
        self.state.request_started(scope["path"])
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


async def _paced(cfg: FakeConfig, tokens: Sequence[str]) -> AsyncIterator[str]:
    """Yields token i at latency + i / tokens_per_s; returns at latency + n / tokens_per_s."""
    loop = asyncio.get_running_loop()
    start = loop.time() + cfg.latency_ms / 1000
    step = 1 / cfg.tokens_per_s if cfg.tokens_per_s else 0.0
    for i, token in enumerate(tokens):
        await asyncio.sleep(max(0.0, start + i * step - loop.time()))
        yield token
    await asyncio.sleep(max(0.0, start + len(tokens) * step - loop.time()))


class _Endpoints:
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self._ids = 0

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            return body
        return error_response(request.url.path.startswith("/v1/"), 400, "body is not a JSON object", None)

    async def _admitted(self, request: Request) -> dict[str, Any] | Response:
        """The request's JSON body, once the rate cap, failures and hangs let it through."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        return await self.state.admit(request) or body

    def _chat(self, body: dict[str, Any], max_tokens: Any) -> tuple[list[str], bool, int]:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        text = self.state.config.answer or fake_answer(messages)
        limit = int(max_tokens) if isinstance(max_tokens, int | float) else None
        return *word_tokens(text, limit), count_prompt_tokens(messages)

    async def ollama_chat(self, request: Request) -> Response:
        body = await self._admitted(request)
        if isinstance(body, Response):
            return body
        cfg, model = self.state.config, body.get("model", "fake")
        if scripted := await self.state.scripted(
                request, body, lambda turn: fake_tools.ollama_body(turn, model)):
            return scripted
        tokens, cut, prompt_tokens = self._chat(
            body, (body.get("options") or {}).get("num_predict")
        )

        def message(content: str, done: bool) -> dict[str, Any]:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            msg = {"role": "assistant", "content": content}
            event = {"model": model, "created_at": created, "message": msg, "done": done}
            if done:
                event |= {
                    "done_reason": "length" if cut else "stop",
                    "prompt_eval_count": prompt_tokens,
                    "eval_count": len(tokens),
                }
            return event

        if cfg.malformed:
            return Response(b"<html>not the protocol</html>\n", media_type="application/x-ndjson")
        if body.get("stream", True) is False:
            async for _ in _paced(cfg, tokens):
                pass
            return json_response(message("".join(tokens), True))

        async def lines() -> AsyncIterator[bytes]:
            async for token in _paced(cfg, tokens):
                yield orjson.dumps(message(token, False)) + b"\n"
            yield orjson.dumps(message("", True)) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def openai_chat(self, request: Request) -> Response:
        body = await self._admitted(request)
        if isinstance(body, Response):
            return body
        cfg, model = self.state.config, body.get("model", "fake")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        tokens, cut, prompt_tokens = self._chat(body, limit)
        self._ids += 1
        if scripted := await self.state.scripted(
                request, body, lambda turn: fake_tools.openai_body(turn, model, self._ids)):
            return scripted
        head = {"id": f"chatcmpl-fake{self._ids}", "created": int(time.time()), "model": model}
        finish = "length" if cut else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        if cfg.malformed:
            return Response(b"<html>not the protocol</html>\n", media_type="text/event-stream")
        if not body.get("stream"):
            async for _ in _paced(cfg, tokens):
                pass
            message = {"role": "assistant", "content": "".join(tokens)}
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return json_response(head | {"object": "chat.completion", "choices": [choice], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = head | {"object": "chat.completion.chunk"}
        if include_usage:
            chunk["usage"] = None  # as OpenAI does: null on every chunk but the last

        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(data) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            role: dict[str, str] = {"role": "assistant"}
            async for token in _paced(cfg, tokens):
                delta, role = role | {"content": token}, {}
                yield event(
                    chunk | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                )
            yield event(chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if include_usage:
                yield event(chunk | {"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _embeddings(self, request: Request) -> tuple[list[str], int, Any] | Response:
        body = await self._admitted(request)
        if isinstance(body, Response):
            return body
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            openai = request.url.path.startswith("/v1/")
            return error_response(openai, 400, "input must be a string or a list of strings", None)
        cfg = self.state.config
        await asyncio.sleep(cfg.latency_ms / 1000)
        if cfg.malformed:
            return Response(b"<html>not the protocol</html>", media_type="application/json")
        dim = int(body.get("dimensions") or cfg.embed_dim)
        return texts, dim, body.get("model", "fake")

    async def ollama_embed(self, request: Request) -> Response:
        got = await self._embeddings(request)
        if isinstance(got, Response):
            return got
        texts, dim, model = got
        words = sum(len(t.split()) for t in texts)
        vectors = hashed_embeddings(texts, dim)
        return json_response({"model": model, "embeddings": vectors, "prompt_eval_count": words})

    async def openai_embeddings(self, request: Request) -> Response:
        got = await self._embeddings(request)
        if isinstance(got, Response):
            return got
        texts, dim, model = got
        words = sum(len(t.split()) for t in texts)
        data = [
            {"object": "embedding", "index": i, "embedding": v}
            for i, v in enumerate(hashed_embeddings(texts, dim))
        ]
        usage = {"prompt_tokens": words, "total_tokens": words}
        return json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def ollama_tags(self, request: Request) -> Response:
        details = {"family": "fake", "parameter_size": "0B", "quantization_level": "none"}
        model = {
            "name": "fake:latest",
            "model": "fake:latest",
            "size": 0,
            "modified_at": "2024-01-01T00:00:00Z",
            "digest": "0" * 64,
            "details": details,
        }
        return json_response({"models": [model]})

    async def openai_models(self, request: Request) -> Response:
        model = {"id": "fake", "object": "model", "created": 0, "owned_by": "metis"}
        return json_response({"object": "list", "data": [model]})

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            try:
                self.state.configure(body)
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(asdict(self.state.config))

    async def stats(self, request: Request) -> Response:
        return json_response(self.state.stats())

    async def tool_script(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            try:
                self.state.tools.load(body.get("script") or [])
            except ValueError as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(self.state.tools.state())

    async def reset(self, request: Request) -> Response:
        body = await self._body(request) if await request.body() else {}
        if isinstance(body, Response):
            return body
        self.state.reset(config=bool(body.get("config")))
        return json_response(self.state.stats())


def create_app(state: FakeState) -> Starlette:
    e = _Endpoints(state)
    routes = [
        Route("/api/chat", e.ollama_chat, methods=["POST"]),
        Route("/api/embed", e.ollama_embed, methods=["POST"]),
        Route("/api/tags", e.ollama_tags, methods=["GET"]),
        Route("/v1/chat/completions", e.openai_chat, methods=["POST"]),
        Route("/v1/embeddings", e.openai_embeddings, methods=["POST"]),
        Route("/v1/models", e.openai_models, methods=["GET"]),
        Route("/_config", e.config, methods=["GET", "POST"]),
        Route("/_stats", e.stats, methods=["GET"]),
        Route("/_reset", e.reset, methods=["POST"]),
        Route("/_tools", e.tool_script, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_CountRequests, state=state)])
