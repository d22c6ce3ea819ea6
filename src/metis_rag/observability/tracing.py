"""OpenTelemetry traces: a span per request, cache level lookup, embedding call, retrieval, LLM
call and task, exported over OTLP/HTTP when an endpoint is configured; off (and near-free) else.

`Tracing` is the lifecycle (`open_services` starts it). Code elsewhere marks its steps with
`traced(name)` (a decorator) or `span(name)`, and reads `current_trace_id()` (for log lines and
audit records). While tracing is off each of those is one attribute read and a branch: the
OpenTelemetry packages (the `otel` extra) are imported only when tracing starts.

The active tracer is one per process (like OpenTelemetry's own global), but it is ours, never
OpenTelemetry's global provider, so tests can start and stop it at will.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..config import ObservabilitySettings
from ..errors import MissingDependency

F = TypeVar("F", bound=Callable[..., Any])
Attributes = Mapping[str, Any]

# The standard variables, read by OpenTelemetry's exporter itself when our setting is empty.
_OTEL_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class _Active:
    tracer: Any = None


_active = _Active()


def enabled() -> bool:
    return _active.tracer is not None


def traced(name: str, attributes: Callable[..., Attributes] | None = None,
           result: Callable[[Any], Attributes] | None = None) -> Callable[[F], F]:
    """Runs the function (sync or async) in a span `name`; `attributes(*args, **kwargs)` and
    `result(returned)` add attributes, and are called only while tracing is on."""

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            async def traced_call(tracer: Any, args: Any, kwargs: Any) -> Any:
                attrs = attributes(*args, **kwargs) if attributes else None
                with tracer.start_as_current_span(name, attributes=attrs) as current:
                    value = await fn(*args, **kwargs)
                    if result is not None:
                        current.set_attributes(result(value))
                    return value

            @functools.wraps(fn)
            def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                tracer = _active.tracer
                if tracer is None:
                    return fn(*args, **kwargs)  # the coroutine itself: no extra frame when off
                return traced_call(tracer, args, kwargs)

            return async_wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _active.tracer
            if tracer is None:
                return fn(*args, **kwargs)
            attrs = attributes(*args, **kwargs) if attributes else None
            with tracer.start_as_current_span(name, attributes=attrs) as current:
                value = fn(*args, **kwargs)
                if result is not None:
                    current.set_attributes(result(value))
                return value

        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F

    return decorate


_NO_SPAN = contextlib.nullcontext()  # stateless, so one instance serves every nested use


def span(name: str, attributes: Attributes | None = None, *,
         root: bool = False) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block (`with span("parse") as s:`; `s` is None
    when off), or with `root` the first span of a trace of its own."""
    tracer = _active.tracer
    if tracer is None:
        return _NO_SPAN
    if root:
        from opentelemetry.context import Context

        return tracer.start_as_current_span(  # type: ignore[no-any-return]  # opentelemetry is optional: typed Any here
            name, context=Context(), attributes=attributes)
    return tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]  # opentelemetry is optional: typed Any here


def start_span(name: str, attributes: Attributes | None = None, **options: Any) -> Any:
    """A span that is not made current (a stream that outlives the call); None when off.
    The caller ends it."""
    tracer = _active.tracer
    if tracer is None:
        return None
    return tracer.start_span(name, attributes=attributes, **options)


def start_request(scope: Mapping[str, Any]) -> tuple[Any, Any, str] | None:
    """The server span of an HTTP request, made current, continuing the client's trace when
    it sends a W3C `traceparent`; None when off. Hand the result to `end_request`."""
    tracer = _active.tracer
    if tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
               if k in (b"traceparent", b"tracestate")}
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    current = tracer.start_span(
        scope["method"], context=parent, kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "url.path": scope["path"]})
    token = context.attach(trace.set_span_in_context(current, parent))
    return current, token, scope["method"]


def end_request(handle: tuple[Any, Any, str], status: int, route: str | None) -> None:
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    current, token, method = handle
    current.set_attribute("http.response.status_code", status)
    if route is not None:
        current.set_attribute("http.route", route)
        current.update_name(f"{method} {route}")
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR))
    current.end()
    context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as lowercase hex, or None."""
    if _active.tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    """The W3C trace id (32 hex digits) of the work in progress, for audit records; None when
    tracing is off or nothing is traced."""
    ids = current_ids()
    return ids[0] if ids else None


def otlp_endpoint(settings: ObservabilitySettings) -> str | None:
    """Where traces go: METIS_OBSERVABILITY__OTLP_ENDPOINT, else the standard OTEL_ variables
    (read by the exporter itself); None = tracing off."""
    if settings.otlp_endpoint:
        return settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    return next((os.environ[v] for v in _OTEL_ENV if os.environ.get(v)), None)


class Tracing:
    """Starts the tracer (process-wide) if an endpoint is configured or an exporter given;
    `close` flushes what is buffered and turns tracing off again."""

    def __init__(self, settings: ObservabilitySettings, exporter: Any = None,
                 *, batch: bool = True) -> None:
        self.settings = settings
        self.exporter = exporter
        self.batch = batch
        self.provider: Any = None

    @property
    def configured(self) -> bool:
        return self.exporter is not None or otlp_endpoint(self.settings) is not None

    def start(self) -> None:
        if not self.configured:
            return
        try:
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise MissingDependency("opentelemetry-sdk", "otel") from exc
        exporter = self.exporter or _otlp_exporter(self.settings)
        self.provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: self.settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(self.settings.trace_sample_ratio)),
        )
        processor = BatchSpanProcessor(exporter) if self.batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        _active.tracer = self.provider.get_tracer("metis_rag")

    def close(self) -> None:
        if self.provider is None:
            return
        if _active.tracer is not None:
            _active.tracer = None
        self.provider.shutdown()  # flushes the batch to the exporter
        self.provider = None


def _otlp_exporter(settings: ObservabilitySettings) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise MissingDependency("opentelemetry-exporter-otlp-proto-http", "otel") from exc
    if settings.otlp_endpoint:
        return OTLPSpanExporter(endpoint=otlp_endpoint(settings))
    return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, headers, timeout
