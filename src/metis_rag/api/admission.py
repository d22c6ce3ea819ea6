"""`AdmissionLimit`: at most `max_in_flight` requests inside the server at once.

Past saturation, more concurrent requests only lengthen everyone's wait: with 200 clients
asking back to back, each waits 200 / throughput, and the unluckiest far longer. Beyond the
limit a request is answered at once with 503 ``overloaded`` and ``Retry-After``, so those
admitted keep a latency near the saturated median, and a client (or a balancer, to another
replica) can try again. Health checks and metrics are never refused: a busy server must not
look dead to its balancer or its monitoring.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Overloaded

EXEMPT = ("/api/health", "/metrics")


TICK_S = 0.005


class AdmissionLimit:
    """`max_in_flight` (0 = no limit) counts requests inside the app. `max_loop_lag_ms` (0 =
    off) also refuses while the event loop runs late: a cached answer barely awaits, so under
    overload the queue is not inside the app but in front of it (sockets read, requests parsed,
    tasks waiting for the loop), where only the loop's lateness shows it. The lag is sampled by
    a timer every 5 ms from the app's lifespan."""

    def __init__(self, app: ASGIApp, max_in_flight: int = 0, retry_after_s: int = 1,
                 max_loop_lag_ms: float = 0) -> None:
        self.app = app
        self.max_in_flight = max_in_flight or None
        self.max_loop_lag_s = max_loop_lag_ms / 1000 or None
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0
        self.loop_lag_s = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.max_loop_lag_s is not None:
            self._tick(asyncio.get_running_loop().time() + TICK_S)
            try:
                await self.app(scope, receive, send)
            finally:
                if self._timer is not None:
                    self._timer.cancel()
            return
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            self.refused += 1
            await self._refuse(send, f"The server is answering {self.max_in_flight} requests "
                                     "already")
            return
        if self.max_loop_lag_s is not None and self.loop_lag_s > self.max_loop_lag_s:
            self.refused += 1
            await self._refuse(send, "The server is behind with the requests it has")
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _tick(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.loop_lag_s = max(0.0, now - due)
        self._timer = loop.call_at(now + TICK_S, self._tick, now + TICK_S)

    async def _refuse(self, send: Send, why: str) -> None:
        exc = Overloaded(f"{why}; try again in {self.retry_after_s} s.")
        body = orjson.dumps(exc.to_dict())
        await send({"type": "http.response.start", "status": exc.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})
