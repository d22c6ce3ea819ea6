"""`RequestMetrics`: the outermost middleware. A request id for every request (the client's
`X-Request-ID` when it is sane, a new one otherwise) bound to every log line and echoed in the
response; the latency per route template and status; one access log line.

Pure ASGI and allocation-light: it runs on every request, including ~1 ms cached answers.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import tracing
from .logs import new_request_id, request_id_var
from .metrics import Metrics

access_log = logging.getLogger("metis.access")

_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# The dashboard polls these, and the pages' own files are not API work: keep them out of the
# figures the dashboard shows (Prometheus still sees them). "/" alone is the question page.
_OUT_OF_WINDOW_PREFIXES = ("/metrics", "/dashboard", "/api/metrics", "/web/")


def _incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _HEADER:
            # Anything else could forge log lines or headers: replace it.
            return value.decode() if _SANE_ID.fullmatch(value) else None
    return None


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._in_window: dict[str, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        traced = tracing.start_request(scope)  # None (and free) while tracing is off
        rid = _incoming_id(scope["headers"]) or new_request_id()
        token = request_id_var.set(rid)
        rid_header = (_HEADER, rid.encode())
        status = 500
        in_flight = self.metrics.http_in_flight
        in_flight.inc()
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # The server-error middleware (outside every user middleware) logs and answers it:
            # the request id stays bound so its log line carries it. Each served request runs
            # in a task of its own, so the binding goes no further than this request.
            status = 500
            self._record(scope, 500, time.perf_counter() - started)
            raise
        else:
            self._record(scope, status, time.perf_counter() - started)
            request_id_var.reset(token)
        finally:
            in_flight.dec()
            if traced is not None:
                tracing.end_request(traced, status, getattr(scope.get("route"), "path", None))

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route: Any = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        in_window = self._in_window.get(path)
        if in_window is None:
            in_window = self._in_window[path] = not (
                path == "/" or path.startswith(_OUT_OF_WINDOW_PREFIXES))
        self.metrics.observe_request(scope["method"], path, status, seconds, in_window)
        if self.access_log:
            access_log.info(
                "%s %s %d %.2f ms", scope["method"], scope["path"], status, seconds * 1000,
                extra={"method": scope["method"], "path": scope["path"], "route": path,
                       "status": status, "duration_ms": round(seconds * 1000, 3)},
            )
