"""`create_app(settings)`: the FastAPI application. Everything is built in the lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .api import (
    admin,
    cache,
    chat,
    collections,
    conversations,
    documents,
    health,
    monitoring,
    pages,
    queries,
    tasks,
)
from .api.admission import AdmissionLimit
from .api.limits import InboundLimits
from .api.openapi import ERROR_RESPONSES
from .config import Settings
from .errors import DatabaseBusy, MetisError, PayloadTooLarge, RateLimited
from .observability.compression import Compression
from .observability.logs import configure_logging, current_request_id
from .observability.metrics import Metrics
from .observability.middleware import RequestMetrics
from .observability.monitor import monitor_services
from .schemas import NO_NUL
from .services import open_services
from .store.db import is_database_busy

log = logging.getLogger("metis")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


class ErrorResponse(JSONResponse):
    """Error bodies, rendered with orjson (route bodies are serialized by Pydantic directly)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: str, message: str, **extra: Any) -> ErrorResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return ErrorResponse(body, status_code=status)


def _problem(error: dict[str, Any]) -> str:
    """Pydantic's message, except for the NUL guard, whose pattern would mean little to a client."""
    if error.get("type") == "string_pattern_mismatch" and \
            (error.get("ctx") or {}).get("pattern") == NO_NUL:
        return "a NUL character is not allowed"
    return str(error.get("msg", ""))


def error_response(exc: Exception) -> ErrorResponse | None:
    """The response the app's handlers give for an error a route may raise (None: an
    unexpected one, for the server-error handler). Shared with `ChatQueryShortcut`, which
    answers outside FastAPI's routing."""
    if isinstance(exc, PoolTimeout):
        # Every pooled connection stayed busy for METIS_POSTGRES__POOL_TIMEOUT_S: shed load.
        exc = DatabaseBusy("Every database connection is in use; try again in a moment.")
    elif is_database_busy(exc):
        # SQLite's write lock stayed taken for METIS_SQLITE_BUSY_TIMEOUT_S; the transaction
        # that waited was rolled back, so nothing of this request was written.
        exc = DatabaseBusy("The database is busy with other writes; nothing was stored. Try "
                           "again in a moment.")
    if isinstance(exc, MetisError):
        response = _error(exc.status, exc.code, exc.message, details=exc.details or None)
        retry_after_s = (exc.retry_after_s if isinstance(exc, RateLimited | DatabaseBusy)
                         else None)
        if retry_after_s is not None:
            response.headers["Retry-After"] = str(max(1, round(retry_after_s)))
        return response
    if isinstance(exc, RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
             "problem": _problem(e)}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "problem": "invalid request"}
        where = f" in '{first['field']}'" if first["field"] else ""
        return _error(
            422, "invalid_input", f"Invalid request{where}: {first['problem']}.",
            details={"errors": errors},
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    async def known_error(_: Request, exc: Exception) -> ErrorResponse:
        response = error_response(exc)
        assert response is not None  # registered for the types error_response knows
        return response

    for known in (MetisError, RequestValidationError, PoolTimeout):
        app.add_exception_handler(known, known_error)

    @app.exception_handler(OperationalError)
    async def database_error(request: Request, exc: OperationalError) -> ErrorResponse:
        return error_response(exc) or await unexpected(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> ErrorResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and message == "Not Found":
            message = "No such endpoint."
        return _error(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> ErrorResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = _error(500, "internal_error", "Something went wrong on our side; it was logged.")
        request_id = current_request_id()  # this handler runs outside RequestMetrics: echo it here
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response


class UploadLimit:
    """Rejects request bodies over the upload limit before they are read (Content-Length) or as
    soon as they exceed it (chunked), so an oversized upload is never stored."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes + 64 * 1024  # room for the multipart framing
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _error(413, "payload_too_large", self._message())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"The upload is larger than the limit of {self.max_bytes / 1048576:g} MB."


class NulInUrl:
    """Refuses a request with a NUL character in its path or query (422 `invalid_input`): no
    id, name or filter holds one, and PostgreSQL text cannot, so looking one up there was a 500.
    (Fields of a JSON body are checked by their models, see `schemas.NO_NUL`.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"]
                                        or b"%00" in scope["query_string"]):
            await _error(422, "invalid_input", "Invalid request: a NUL character is not allowed "
                         "in the URL.")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """`freeze_gc` (for a server process, `metis serve`): once started, move every object
    built so far (the model, the indexes, the settings) out of the garbage collector's reach.
    Otherwise each full collection walks them all: 70-95 ms about once a second under load,
    collecting nothing (gc.callbacks on a saturated `metis serve`)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics.for_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_services(settings, metrics) as services, monitor_services(services):
            if freeze_gc:
                gc.collect()
                gc.freeze()
            yield {"services": services}

    app = FastAPI(
        title="Metis",
        version=__version__,
        description="A fast, frugal RAG server: answers with citations over your documents.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # Metis traces requests itself (observability/tracing.py, never OpenTelemetry's global
        # providers). FastAPI's own telemetry, on by default, asks those global providers on
        # every request whether it should run: three environment reads for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    _include_routers(app)
    # Added first, so innermost: inside every middleware below, in front of FastAPI's routing.
    app.add_middleware(chat.ChatQueryShortcut, route=_route(chat.router, chat.QUERY_PATH),
                       render_error=error_response)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(NulInUrl)
    compression = settings.compression
    if compression.enabled:
        app.add_middleware(Compression, min_bytes=compression.min_bytes,
                           gzip_level=compression.gzip_level, zstd_level=compression.zstd_level)
    if settings.ratelimit.max_in_flight or settings.ratelimit.max_loop_lag_ms:
        # Inside RequestMetrics, so refused requests are counted as 503s.
        app.add_middleware(AdmissionLimit, max_in_flight=settings.ratelimit.max_in_flight,
                           max_loop_lag_ms=settings.ratelimit.max_loop_lag_ms)
    # Added last, so outermost: its latency covers compression and every other middleware.
    app.add_middleware(RequestMetrics, metrics=metrics,
                       access_log=settings.observability.access_log)
    # Added last, so it runs first: a refused request costs no upload and no routing. Always
    # there: keys made by `metis keys create` turn authentication on while the server runs.
    app.add_middleware(InboundLimits, per_minute=settings.ratelimit.inbound_per_minute,
                       burst=settings.ratelimit.inbound_burst,
                       protect_ops=settings.auth.protect_ops,
                       scrape_token=settings.auth.scrape_token,
                       trusted_proxies=settings.auth.trusted_proxies)
    return app


def _include_routers(app: FastAPI) -> None:
    for module in (documents, chat, queries, conversations, collections, health, cache,
                   monitoring, tasks, admin, pages):
        app.include_router(module.router)


def _route(router: APIRouter, path: str) -> BaseRoute:
    return next(r for r in router.routes if getattr(r, "path", None) == path)
