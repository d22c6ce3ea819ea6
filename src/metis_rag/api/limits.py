"""`InboundLimits`: optional API keys and per-client rate limits in front of every /api route.

A client is its API key (``X-API-Key``, or ``Authorization: Bearer``) when it sends one, else
its IP address. With `api_keys` configured, a request without a valid key gets 401
``unauthorized``; over its rate, 429 ``rate_limited`` with ``Retry-After``. ``/api/health`` is
exempt from both (load balancers probe it). Pure ASGI, so a refused request costs no routing and
an upload is refused before its body is read.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import MetisError, RateLimited, Unauthorized
from ..ratelimit import ClientLimiter, Clock, key_id

EXEMPT = frozenset({"/api/health"})


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The API key a request carries, from X-API-Key or a Bearer token."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


class InboundLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str] = (),
        per_minute: float = 0.0,
        burst: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self._keys = [k.encode() for k in api_keys if k]
        self.limiter = ClientLimiter(per_minute, burst, clock=clock) if per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in EXEMPT:
            await self.app(scope, receive, send)
            return
        try:
            self._admit(scope)
        except MetisError as exc:
            await _refuse(exc, send)
            return
        await self.app(scope, receive, send)

    def _admit(self, scope: Scope) -> None:
        key = presented_key(scope["headers"])
        if self._keys and not (key and self._valid(key)):
            raise Unauthorized(
                "This server needs an API key: send it as X-API-Key or Authorization: Bearer."
                if not key else "The API key is not valid."
            )
        if self.limiter is None:
            return
        client = scope.get("client")
        who = f"key:{key_id(key)}" if key else f"ip:{client[0] if client else 'unknown'}"
        wait_s = self.limiter.check(who)
        if wait_s > 0:
            raise RateLimited(
                f"Too many requests: the limit is {self.limiter.per_minute:g} a minute per "
                f"client; retry in {math.ceil(wait_s)} s.",
                retry_after_s=wait_s,
            )

    def _valid(self, key: str) -> bool:
        given = key.encode()
        # Compare with every key (no short cut), each in constant time: timing reveals nothing.
        matches = [hmac.compare_digest(given, k) for k in self._keys]
        return any(matches)


async def _refuse(exc: MetisError, send: Send) -> None:
    headers = [(b"content-type", b"application/json")]
    if isinstance(exc, RateLimited):
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
    elif isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="metis"'))
    body = orjson.dumps(exc.to_dict())
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
