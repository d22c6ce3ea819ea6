"""The fake LLM's run-time configuration and counters: latency, token rate, injected failures,
hangs, the requests-per-second cap, and what clients did (``GET /_stats``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

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


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status, headers, media_type="application/json")


def error_response(openai: bool, status: int, message: str, retry_after_s: float | None) -> Response:
    kind = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status, "server_error")
    body = (
        {"error": {"message": message, "type": kind, "code": kind}}
        if openai
        else {"error": message}
    )
    headers = {}
    if retry_after_s is not None:
        headers = {"Retry-After": f"{retry_after_s:.3f}".rstrip("0").rstrip(".") or "0"}
    return json_response(body, status, headers)


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
                return error_response(openai, 401, "invalid api key", None)
        if cfg.max_rps:
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= cfg.max_rps:
                self._rate_limited += 1
                wait_s = self._window[0] + 1.0 - now
                return error_response(openai, 429, f"over {cfg.max_rps} requests/s", wait_s)
            self._window.append(now)
        # Request n fails when n * fail_rate crosses an integer: an exact, even spread.
        self._admitted += 1
        n, rate = self._admitted, cfg.fail_rate
        if math.floor(n * rate + 1e-9) > math.floor((n - 1) * rate + 1e-9):
            self._failures += 1
            retry = cfg.retry_after_s if cfg.fail_status == 429 else None
            return error_response(openai, cfg.fail_status, "injected failure", retry)
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
        return await self.hang(request) if turn.get("hang") else json_response(reply(turn))
