"""`AdmissionLimit`: at most `max_in_flight` requests inside the server at once.

Past saturation, more concurrent requests only lengthen everyone's wait: with 200 clients
asking back to back, each waits 200 / throughput, and the unluckiest far longer. Beyond the
limit a request is answered at once with 503 ``overloaded`` and ``Retry-After``, so those
admitted keep a latency near the saturated median, and a client (or a balancer, to another
replica) can try again. Health checks and metrics are never refused: a busy server must not
look dead to its balancer or its monitoring.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Overloaded

EXEMPT = ("/api/health", "/metrics")


class AdmissionLimit:
    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            await self._refuse(send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send: Send) -> None:
        exc = Overloaded(f"The server is answering {self.max_in_flight} requests already; "
                         f"try again in {self.retry_after_s} s.")
        body = orjson.dumps(exc.to_dict())
        await send({"type": "http.response.start", "status": exc.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})
