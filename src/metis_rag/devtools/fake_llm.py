"""A small real HTTP server speaking the Ollama and OpenAI protocols, for tests and benchmarks.

Answers are deterministic: given numbered sources (a line starting ``[1]``) the answer is
"According to [1], <first sentence of source 1>". Embeddings are hashed bag-of-words vectors,
so texts sharing words get similar vectors. Latency, token rate, injected failures, hangs and a
requests-per-second cap are set at start or at run time (``POST /_config`` with `FakeConfig`
fields); ``GET /_stats`` shows what clients did and ``POST /_reset`` clears it (``{"config":
true}`` also restores the start-up config). ``POST /_tools {"script": [...]}`` scripts tool calls
for requests that declare `tools` (see `fake_tools`). Failures, hangs and the cap apply to chat and
embedding requests; ``/api/tags`` and ``/v1/models`` always answer.

    python -m metis_rag.devtools.fake_llm --port 11434 --latency-ms 1000 --fail-rate 0.5

    with FakeLLMServer(latency_ms=50) as fake:  # or `async with`
        fake.url, fake.configure(fail_rate=0.5, fail_status=429), fake.stats()

For load tests run the CLI as its own process, so the server does not share a GIL with the client.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import fake_tools


@dataclass(frozen=True)
class FakeConfig:
    latency_ms: float = 0.0  # before the first token, and before an embedding answer
    tokens_per_s: float = 0.0  # 0 = every token at once
    fail_rate: float = 0.0  # share of chat/embed requests answered with fail_status
    fail_status: int = 500
    retry_after_s: float = 1.0  # sent as Retry-After with a 429
    hang: bool = False  # accept chat/embed requests and never answer
    max_rps: int = 0  # chat/embed requests beyond this in any 1 s window get 429; 0 = no cap
    malformed: bool = False  # answer 200 with a body that is not the protocol
    embed_dim: int = 384
    answer: str = ""  # a fixed answer instead of the one derived from the prompt
    api_key: str = ""  # when set, /v1 chat/embed requests need "Authorization: Bearer <key>"

    def updated(self, changes: Mapping[str, Any]) -> FakeConfig:
        current = asdict(self)
        if unknown := set(changes) - set(current):
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        coerced = {}
        for name, value in changes.items():
            kind = type(current[name])
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            coerced[name] = kind(value)
        new = replace(self, **coerced)
        if not 0 <= new.fail_rate <= 1 or not 400 <= new.fail_status <= 599 or new.embed_dim < 1:
            raise ValueError("need 0 <= fail_rate <= 1, 400 <= fail_status <= 599, embed_dim >= 1")
        if min(new.latency_ms, new.tokens_per_s, new.retry_after_s, new.max_rps) < 0:
            raise ValueError("latency_ms, tokens_per_s, retry_after_s and max_rps must be >= 0")
        return new


_SOURCE_MARK = re.compile(r"^[ \t>*-]*(?:source\s*)?\[(\d+)\][ \t:.)-]*", re.I | re.M)
_SENTENCE = re.compile(r"(.+?[.!?])(?=\s|$)", re.S)


def fake_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """Cites the first numbered source of the latest message that has one, else echoes the ask."""
    for message in reversed(messages):
        text = _text_of(message)
        if mark := _SOURCE_MARK.search(text):
            block = re.split(r"\n[ \t]*\n", text[mark.end() :], maxsplit=1)[0]
            if nxt := _SOURCE_MARK.search(block):
                block = block[: nxt.start()]
            # "[1] label\nchunk text": the first line names the source, the rest is its text.
            lines = block.strip().splitlines()
            body = " ".join(lines[1:] if len(lines) > 1 else lines).strip()
            first = _SENTENCE.match(body)
            sentence = first.group(1) if first else " ".join(body.split()[:40])
            return f"According to [{mark.group(1)}], {' '.join(sentence.split())}"
    question = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"No sources were given for: {' '.join(question.split()[:40])}"


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _tokens(text: str, max_tokens: int | None) -> tuple[list[str], bool]:
    """Word-sized tokens that concatenate back to `text`, cut at `max_tokens`."""
    tokens = re.findall(r"\s*\S+", text)
    if max_tokens is not None and 0 <= max_tokens < len(tokens):
        return tokens[:max_tokens], True
    return tokens, False


def _prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(_text_of(m).split()) for m in messages)


@lru_cache(maxsize=65536)
def _word_hash(word: str) -> int:
    # blake2b, not hash(): vectors must be equal across processes.
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def hashed_embeddings(texts: Sequence[str], dim: int) -> np.ndarray:
    """Signed hashed bag-of-words, L2-normalised float32 rows."""
    out = np.zeros((len(texts), dim), np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()) or [""]:
            h = _word_hash(word)
            out[row, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status, headers, media_type="application/json")


def _error(openai: bool, status: int, message: str, retry_after_s: float | None) -> Response:
    kind = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status, "server_error")
    body = (
        {"error": {"message": message, "type": kind, "code": kind}}
        if openai
        else {"error": message}
    )
    headers = {}
    if retry_after_s is not None:
        headers = {"Retry-After": f"{retry_after_s:.3f}".rstrip("0").rstrip(".") or "0"}
    return _json(body, status, headers)


class FakeState:
    """Configuration and counters; touched only from the server's event loop."""

    def __init__(self, config: FakeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.initial = self.config = config
        self.closing = False
        self.in_flight = 0
        self._clock = clock
        self.tools = fake_tools.ToolScript()  # scripted tool calls (fake_tools)
        self.reset()

    def configure(self, changes: Mapping[str, Any]) -> FakeConfig:
        self.config = self.config.updated(changes)
        return self.config

    def reset(self, config: bool = False) -> None:
        if config:
            self.config = self.initial
        self._started = self._clock()
        self._requests: Counter[str] = Counter()
        self._per_second: Counter[int] = Counter()
        self._failures = self._rate_limited = self._admitted = 0
        self._max_concurrency = self.in_flight
        self._window: deque[float] = deque()

    def stats(self) -> dict[str, Any]:
        last = max(self._per_second, default=-1)
        return {
            "requests": dict(self._requests),
            "requests_total": sum(self._requests.values()),
            "failures": self._failures,
            "rate_limited": self._rate_limited,
            "in_flight": self.in_flight,
            "max_concurrency": self._max_concurrency,
            "requests_per_second": [self._per_second[s] for s in range(last + 1)],
        }

    def request_started(self, path: str) -> None:
        self._requests[path] += 1
        self._per_second[int(self._clock() - self._started)] += 1
        self.in_flight += 1
        self._max_concurrency = max(self._max_concurrency, self.in_flight)

    async def admit(self, request: Request) -> Response | None:
        """The rate cap, injected failures and hangs; ``None`` lets the request through."""
        cfg, now = self.config, self._clock()
        openai = request.url.path.startswith("/v1/")
        if openai and cfg.api_key:
            if request.headers.get("authorization") != f"Bearer {cfg.api_key}":
                return _error(openai, 401, "invalid api key", None)
        if cfg.max_rps:
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= cfg.max_rps:
                self._rate_limited += 1
                wait_s = self._window[0] + 1.0 - now
                return _error(openai, 429, f"over {cfg.max_rps} requests/s", wait_s)
            self._window.append(now)
        # Request n fails when n * fail_rate crosses an integer: an exact, even spread.
        self._admitted += 1
        n, rate = self._admitted, cfg.fail_rate
        if math.floor(n * rate + 1e-9) > math.floor((n - 1) * rate + 1e-9):
            self._failures += 1
            retry = cfg.retry_after_s if cfg.fail_status == 429 else None
            return _error(openai, cfg.fail_status, "injected failure", retry)
        if cfg.hang:
            return await self.hang(request)
        return None

    async def hang(self, request: Request) -> Response:
        while not self.closing and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        return Response(status_code=503)

    async def scripted(self, request: Request, body: Mapping[str, Any],
                       reply: Callable[[dict[str, Any]], dict[str, Any]]) -> Response | None:
        """The next scripted tool turn for a request that declares tools, if any."""
        if not body.get("tools"):
            return None
        turn = self.tools.next_turn(body)
        if turn is None:
            return None
        return await self.hang(request) if turn.get("hang") else _json(reply(turn))


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
        return _error(request.url.path.startswith("/v1/"), 400, "body is not a JSON object", None)

    def _chat(self, body: dict[str, Any], max_tokens: Any) -> tuple[list[str], bool, int]:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        text = self.state.config.answer or fake_answer(messages)
        limit = int(max_tokens) if isinstance(max_tokens, int | float) else None
        return *_tokens(text, limit), _prompt_tokens(messages)

    async def ollama_chat(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if denied := await self.state.admit(request):
            return denied
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
            return _json(message("".join(tokens), True))

        async def lines() -> AsyncIterator[bytes]:
            async for token in _paced(cfg, tokens):
                yield orjson.dumps(message(token, False)) + b"\n"
            yield orjson.dumps(message("", True)) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def openai_chat(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if denied := await self.state.admit(request):
            return denied
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
            return _json(head | {"object": "chat.completion", "choices": [choice], "usage": usage})
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
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if denied := await self.state.admit(request):
            return denied
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            openai = request.url.path.startswith("/v1/")
            return _error(openai, 400, "input must be a string or a list of strings", None)
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
        return _json({"model": model, "embeddings": vectors, "prompt_eval_count": words})

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
        return _json({"object": "list", "data": data, "model": model, "usage": usage})

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
        return _json({"models": [model]})

    async def openai_models(self, request: Request) -> Response:
        model = {"id": "fake", "object": "model", "created": 0, "owned_by": "metis"}
        return _json({"object": "list", "data": [model]})

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            try:
                self.state.configure(body)
            except (TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 400)
        return _json(asdict(self.state.config))

    async def stats(self, request: Request) -> Response:
        return _json(self.state.stats())

    async def tool_script(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            try:
                self.state.tools.load(body.get("script") or [])
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
        return _json(self.state.tools.state())

    async def reset(self, request: Request) -> Response:
        body = await self._body(request) if await request.body() else {}
        if isinstance(body, Response):
            return body
        self.state.reset(config=bool(body.get("config")))
        return _json(self.state.stats())


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


def _uvicorn_config(app: ASGIApp, **kw: Any) -> uvicorn.Config:
    # ws="none" keeps websockets (and its deprecation warnings) out; lifespan is unused.
    return uvicorn.Config(
        app, lifespan="off", ws="none", access_log=False, timeout_graceful_shutdown=2, **kw
    )


_T = TypeVar("_T")


class FakeLLMServer:
    """The fake on 127.0.0.1 (a free port unless given) in a background thread.

    A sync and an async context manager. `configure`, `stats` and `reset` act on the running
    server directly; `clock` drives the rate cap and the per-second histogram.
    """

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> None:
        self._state = FakeState((config or FakeConfig()).updated(settings), clock)
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    def start(self) -> None:
        if self._server is not None:
            return
        self._state.closing = False
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says so, and without it every response waits ~40 ms on Nagle.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(_uvicorn_config(create_app(self._state), log_level="warning"))
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(server, sock), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.005)

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(serve())

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._call(setattr, self._state, "closing", True)  # releases hanging requests
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = self._loop = None

    def configure(self, **changes: Any) -> FakeConfig:
        return self._call(self._state.configure, changes)

    def stats(self) -> dict[str, Any]:
        return self._call(self._state.stats)

    def reset(self, config: bool = False) -> None:
        self._call(self._state.reset, config)

    def script_tools(self, turns: Sequence[Mapping[str, Any]]) -> None:
        """Answer the next requests that declare tools with `turns` (see `fake_tools`)."""
        self._call(self._state.tools.load, turns)

    def tool_requests(self) -> list[dict[str, Any]]:
        """Messages and tool names of every request with tools since the script was loaded."""
        return self._call(lambda: list(self._state.tools.requests))

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs `fn` on the server's loop, where the state lives, and returns its result."""
        if self._loop is None:
            return fn(*args)

        async def call() -> _T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def __enter__(self) -> FakeLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLLMServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    for f in fields(FakeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"float": float, "int": int, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    state = FakeState(FakeConfig().updated(args))
    print(f"fake LLM on http://{host}:{port} (Ollama /api/*, OpenAI /v1/*): {state.config}")
    uvicorn.Server(_uvicorn_config(create_app(state), host=host, port=port)).run()


if __name__ == "__main__":
    main()
