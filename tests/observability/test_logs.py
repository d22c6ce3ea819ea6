"""Structured logs: JSON lines, stdlib records included, and the request id on every line
logged while a request is served."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import structlog
from fastapi import FastAPI

from metis_rag.observability.logs import configure_logging

from .conftest import serve


def _routes(app: FastAPI) -> None:
    async def chatty() -> dict[str, str]:
        structlog.get_logger("metis.test").info("structlog line", answer=42)
        logging.getLogger("metis.test").warning("stdlib line %s", "with args")
        # worker threads inherit the request's context
        await asyncio.to_thread(logging.getLogger("metis.test").info, "thread line")
        return {"ok": "yes"}

    async def broken() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/_test/chatty", chatty)
    app.add_api_route("/_test/broken", broken)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


async def test_every_line_of_a_request_carries_its_id(make_settings) -> None:  # type: ignore[no-untyped-def]
    # Every SQL statement is "slow": the request logs from SQLAlchemy's event hooks too.
    settings = make_settings(observability={"slow_query_ms": 1e-6})
    async with serve(settings, _routes) as s:
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        r = await s.client.get("/_test/chatty", headers={"X-Request-ID": "req-123.abc"})
        assert r.headers["x-request-id"] == "req-123.abc"
        r2 = await s.client.get("/api/documents")
        other = r2.headers["x-request-id"]
        assert len(other) == 16 and other != "req-123.abc"

    lines = _lines(buf)
    mine = [ln for ln in lines if ln.get("request_id") == "req-123.abc"]
    events = {ln["event"] for ln in mine}
    assert {"structlog line", "stdlib line with args", "thread line"} <= events
    assert any(ln["logger"] == "metis.access" and ln["status"] == 200 for ln in mine)
    assert next(ln for ln in mine if ln["event"] == "structlog line")["answer"] == 42
    slow = [ln for ln in lines if ln["logger"] == "metis.db"]
    # the monitoring's own background statements (the task counts it samples) serve no request
    background = [ln for ln in slow if "request_id" not in ln]
    assert all("FROM tasks" in ln["statement"] for ln in background), background
    served = [ln for ln in slow if "request_id" in ln]
    assert served and all(ln["request_id"] == other for ln in served)
    assert all({"timestamp", "level", "logger", "event"} <= ln.keys() for ln in lines)


async def test_unsafe_incoming_ids_are_replaced(served) -> None:  # type: ignore[no-untyped-def]
    for bad in ["x" * 200, "a b", "evil\"}{", ""]:
        r = await served.client.get("/api/documents", headers={"X-Request-ID": bad})
        rid = r.headers["x-request-id"]
        assert rid != bad and len(rid) == 16


async def test_unhandled_errors_keep_the_request_id(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with serve(make_settings(), _routes, raise_app_exceptions=False) as s:
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        r = await s.client.get("/_test/broken", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 500
    assert r.json() == {"code": "internal_error",
                        "message": "Something went wrong on our side; it was logged."}
    assert r.headers["x-request-id"] == "err-1"
    error = next(ln for ln in _lines(buf) if ln["level"] == "error")
    assert error["request_id"] == "err-1"
    assert "RuntimeError: boom" in error["exception"]
    assert "boom" not in r.text


def test_console_format_is_for_people() -> None:
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    try:
        logging.getLogger("metis.test").warning("hello %s", "there", extra={"k": "v"})
    finally:
        configure_logging("info", "json")
    out = buf.getvalue()
    assert "hello there" in out and "k=v" in out
    assert not out.lstrip().startswith("{")


def test_configuring_twice_keeps_one_handler() -> None:
    configure_logging("info", "json")
    configure_logging("warning", "json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_metis_handler", False)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.WARNING
    configure_logging("info", "json")
