"""`InboundLimits`: API keys, roles, per-client rate limits and the audit trail, in front of
every route.

A client is its API key (``X-API-Key``, or ``Authorization: Bearer``) when it sends one, else
its IP address. With keys in use (METIS_API_KEYS or keys in the database), a request without a
valid key gets 401 ``unauthorized``; a valid one is resolved to its tenant and role (a
`Principal` in the request state, read by the routes). Over its rate, 429 ``rate_limited`` with
``Retry-After``. ``/api/health`` is exempt (load balancers probe it). The operator pages need
a key when keys are in use (/metrics an operator's; /docs, /redoc, /openapi.json an admin's),
unless METIS_AUTH__PROTECT_OPS=false; /metrics also opens to METIS_AUTH__SCRAPE_TOKEN. Pure
ASGI, so a refused request costs no routing and an upload is refused before its body is read.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Forbidden, MetisError, RateLimited, Unauthorized
from ..observability.logs import current_request_id
from ..observability.tracing import current_trace_id
from ..ratelimit import ClientLimiter, Clock, key_id
from ..tenancy.keys import KeyRing
from ..tenancy.principal import Principal, Role
from .proxies import ClientAddress

EXEMPT = frozenset({"/api/health"})
# /dashboard is not here: the page is a shell with no data that signs in to fetch its data from
# /api/metrics/summary (admins), the way the question page does; a browser cannot send a key
# header when it opens a page.
OPS_PAGES = ("/metrics", "/docs", "/redoc", "/openapi.json")

# What the audit log records: (method, path) -> action; the group is the target's id.
_AUDITED: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "POST": [(re.compile(r"^/api/chat/query$"), "question"),
             (re.compile(r"^/api/documents$"), "document.upload"),
             (re.compile(r"^/api/tasks$"), "task.submit"),
             (re.compile(r"^/api/tasks/([^/]+)/cancel$"), "task.cancel"),
             (re.compile(r"^/api/tasks/([^/]+)/retry$"), "task.retry"),
             (re.compile(r"^/api/keys$"), "key.create"),
             (re.compile(r"^/api/keys/([^/]+)/rotate$"), "key.rotate")],
    "PUT": [(re.compile(r"^/api/documents/([^/]+)$"), "document.replace")],
    "PATCH": [(re.compile(r"^/api/conversations/([^/]+)$"), "conversation.rename")],
    "DELETE": [(re.compile(r"^/api/documents/([^/]+)$"), "document.delete"),
               (re.compile(r"^/api/conversations/([^/]+)$"), "conversation.delete"),
               (re.compile(r"^/api/cache$"), "cache.clear"),
               (re.compile(r"^/api/keys/([^/]+)$"), "key.revoke")],
}


def audited_action(method: str, path: str) -> tuple[str, str] | None:
    """(action, target id) when the request is one the audit log records."""
    for pattern, action in _AUDITED.get(method, ()):
        found = pattern.match(path)
        if found:
            return action, found.group(1) if found.groups() else ""
    return None


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The API key a request carries, from X-API-Key or a Bearer token."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


def _is_ops_page(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPS_PAGES)


class InboundLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        per_minute: float = 0.0,
        burst: float = 60.0,
        protect_ops: bool | None = None,
        scrape_token: str = "",
        trusted_proxies: Sequence[str] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self.client_address = ClientAddress(trusted_proxies)
        self.limiter = ClientLimiter(per_minute, burst, clock=clock) if per_minute > 0 else None
        self._protect_ops = protect_ops is not False
        self._scrape_token = scrape_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        state: dict[str, Any] = scope.setdefault("state", {})
        services = state.get("services")
        keyring: KeyRing | None = services.keyring if services is not None else None
        keys_on = keyring is not None and keyring.enabled
        if not path.startswith("/api/"):
            if (keys_on or self._scrape_token) and _is_ops_page(path):
                try:
                    self._admit_ops(scope, keyring if keys_on else None)
                except MetisError as exc:
                    await _refuse(exc, send)
                    return
            await self.app(scope, receive, send)
            return
        if path in EXEMPT or not (keys_on or self.limiter):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._admit(scope, keyring if keys_on else None)
        except MetisError as exc:
            await _refuse(exc, send)
            return
        if principal is None:
            await self.app(scope, receive, send)
            return
        state["principal"] = principal
        audited = audited_action(scope["method"], path)
        if audited is None:
            await self.app(scope, receive, send)
            return
        await self._audited(scope, receive, send, principal, audited, services)

    async def _audited(self, scope: Scope, receive: Receive, send: Send, principal: Principal,
                       audited: tuple[str, str], services: Any) -> None:
        status = 500
        trace_id = ""

        async def watch(message: Message) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                # Sent from inside the request's span and request id (RequestMetrics runs
                # within this middleware, and has unbound both by the time the app returns).
                trace_id = current_trace_id() or current_request_id() or ""
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            action, target = audited
            if action == "cache.clear":
                target = scope.get("query_string", b"").decode("latin-1")
            services.audit.record(
                tenant=principal.tenant, actor=principal.key_id, action=action, target=target,
                status=status, client=self.client_address.of(scope),
                detail=scope["state"].get("audit_detail"), trace_id=trace_id,
            )

    def _admit(self, scope: Scope, keyring: KeyRing | None) -> Principal | None:
        key = presented_key(scope["headers"])
        principal = None
        if keyring is not None:
            if not key:
                raise Unauthorized(
                    "This server needs an API key: send it as X-API-Key or Authorization: Bearer."
                )
            principal = keyring.lookup(key)
            if principal is None:
                raise Unauthorized("The API key is not valid.")
        if self.limiter is None:
            return principal
        who = f"key:{key_id(key)}" if key else f"ip:{self.client_address.of(scope) or 'unknown'}"
        wait_s = self.limiter.check(who)
        if wait_s > 0:
            raise RateLimited(
                f"Too many requests: the limit is {self.limiter.per_minute:g} a minute per "
                f"client; retry in {math.ceil(wait_s)} s.",
                retry_after_s=wait_s,
            )
        return principal

    def _admit_ops(self, scope: Scope, keyring: KeyRing | None) -> None:
        key = presented_key(scope["headers"])
        path: str = scope["path"]
        if (self._scrape_token and key and path == "/metrics"
                and hmac.compare_digest(key.encode(), self._scrape_token)):
            return
        if keyring is None or not self._protect_ops:
            if path == "/metrics":  # only a scrape token protects it
                raise Unauthorized("/metrics needs the scrape token as Authorization: Bearer.")
            return
        if not key:
            raise Unauthorized(f"{path} needs an admin API key (X-API-Key or Authorization: "
                               "Bearer).")
        principal = keyring.lookup(key)
        if principal is None:
            raise Unauthorized("The API key is not valid.")
        # /metrics is the whole server's (every tenant's traffic): an operator's. The API's
        # documentation pages are the same for everyone: any tenant's admin may read them.
        need: Role = "operator" if path == "/metrics" else "admin"
        if not principal.allows(need):
            raise Forbidden(f"{path} needs an {need} key; this key is {principal.described}.")


async def _refuse(exc: MetisError, send: Send) -> None:
    headers = [(b"content-type", b"application/json")]
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
    elif isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="metis"'))
    body = orjson.dumps(exc.to_dict())
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
