"""Structured logs: structlog renders every record (stdlib ones included) as JSON or for a console,
with the id of the HTTP request being served on every line logged while serving it."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Literal, TextIO

import orjson
import structlog

from . import tracing

request_id_var: ContextVar[str | None] = ContextVar("metis_request_id", default=None)
"""The id of the request being served; the metrics middleware sets it for each request."""

_HANDLER_MARK = "_metis_handler"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


def new_request_id() -> str:
    # A correlation id, not a secret: the module's generator (seeded from os.urandom, and again
    # in a forked child) instead of `secrets`, whose system call per request was 3 % of a
    # saturated server's main thread.
    return f"{random.getrandbits(64):016x}"


def current_request_id() -> str | None:
    return request_id_var.get()


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    rid = request_id_var.get()
    if rid is not None and "request_id" not in event:
        event["request_id"] = rid
    return event


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if tracing.enabled() and "trace_id" not in event:
        ids = tracing.current_ids()
        if ids is not None:
            event["trace_id"], event["span_id"] = ids
    return event


def _add_extra(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fields a stdlib call passed as `extra=` (structlog's ExtraAdder would also pick up the
    `message` another formatter may have cached on the record)."""
    record = event.get("_record")
    if record is not None:
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in event:
                event[key] = value
    return event


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        _add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
) -> None:
    """Routes structlog and stdlib logging through one handler on the root logger.

    Idempotent: calling it again replaces the handler it installed before, and leaves any other
    handler (a test runner's, say) alone.
    """
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any
    if fmt == "json":
        renderer = [structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=_orjson_dumps)]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _add_extra],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that narrate routine work at info: one line per outbound HTTP call (httpx) or
    # per migration plugin (alembic) would drown the request lines.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event text and its key-value fields, for records of structlog and of stdlib alike."""
    msg = record.msg
    if isinstance(msg, dict):  # a structlog event dict, wrapped for ProcessorFormatter
        fields = {k: v for k, v in msg.items()
                  if k not in ("event", "level", "logger", "timestamp", "_record",
                               "_from_structlog")}
        return str(msg.get("event", "")), fields
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    return record.getMessage(), extra
