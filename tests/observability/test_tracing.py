"""OpenTelemetry traces: off by default, spans for every step of a question and a task when an
OTLP endpoint is configured (checked on a real OTLP/HTTP receiver), trace ids in the logs and
for audit records, and a clear error when the `otel` extra is missing."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metis_rag.config import LLMSettings, ObservabilitySettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.devtools.otlp_receiver import OtlpReceiver, ReceivedSpan
from metis_rag.errors import MissingDependency
from metis_rag.observability import tracing
from metis_rag.observability.logs import configure_logging

from .conftest import serve

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
AUDIT_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(autouse=True)
def no_standard_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _audit_route(app: FastAPI) -> None:
    async def audit() -> dict[str, Any]:
        return {"trace_id": tracing.current_trace_id()}

    app.add_api_route("/_test/audit", audit)


async def test_off_by_default_nothing_is_traced(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with serve(make_settings(), _audit_route) as s:
        assert not tracing.enabled()
        r = await s.client.get("/_test/audit", headers={"traceparent": TRACEPARENT})
        assert r.json() == {"trace_id": None}
        with tracing.span("anything") as current:
            assert current is None


@pytest.fixture(scope="module")
def fake_llm() -> Any:
    with FakeLLMServer() as server:
        yield server


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def test_a_question_and_a_task_are_traced_over_otlp(make_settings, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake_llm.reset(config=True)
    with OtlpReceiver() as receiver:
        settings = make_settings(
            observability={"otlp_endpoint": receiver.url, "service_name": "metis-test"},
            llm=LLMSettings(provider="openai", url=fake_llm.url, model="fake", timeout_s=5))
        async with serve(settings, _audit_route) as s:
            assert tracing.enabled()
            await s.ingest()
            buf = io.StringIO()
            configure_logging("info", "json", stream=buf)
            headers = {"traceparent": TRACEPARENT}
            r = await s.client.post("/api/chat/query", headers=headers,
                                    json={"message": "How long is the refund window?"})
            assert r.status_code == 200 and r.json()["mode"] == "llm"
            r = await s.client.post("/api/chat/query",
                                    json={"message": "How long is the refund window?"})
            assert r.json()["cache"]["level"] == "exact"
            audit = (await s.client.get("/_test/audit", headers={
                "traceparent": f"00-{AUDIT_TRACE}-b7ad6b7169203331-01"})).json()
        assert not tracing.enabled()  # closing the app flushed the spans and turned it off
        spans = receiver.spans()

    assert audit == {"trace_id": AUDIT_TRACE}
    assert {s.service_name for s in spans} == {"metis-test"}
    # the first question, continuing the client's trace
    question = [s for s in spans if s.trace_id == CLIENT_TRACE]
    root = next(s for s in question if s.name == "POST /api/chat/query")
    assert root.parent_span_id == CLIENT_SPAN and root.kind == 2  # SERVER
    assert root.attributes["http.route"] == "/api/chat/query"
    assert root.attributes["http.response.status_code"] == 200
    names = {s.name for s in question}
    assert {"cache.lookup", "embed", "retrieve", "generate"} <= names
    levels = {s.attributes["metis.cache.level"]: s.attributes.get("metis.cache.hit")
              for s in _by_name(question, "cache.lookup")}
    # At the default error bound the semantic level cannot serve, so it is not looked up.
    assert levels["exact"] is False and levels.get("semantic") in (None, False)
    assert "llm" in levels
    generate = _by_name(question, "generate")[0]
    assert generate.attributes["gen_ai.usage.output_tokens"] > 0
    by_id = {s.span_id: s for s in question}
    for s in question:  # one tree under the request span
        if s is not root:
            assert s.parent_span_id in by_id, s
    # the repeat: an exact hit, nothing else
    repeat_root = next(s for s in spans if s.name == "POST /api/chat/query"
                       and s.trace_id != CLIENT_TRACE)
    repeat = [s for s in spans if s.trace_id == repeat_root.trace_id]
    assert [(s.name, s.attributes.get("metis.cache.hit")) for s in repeat
            if s is not repeat_root] == [("cache.lookup", True)]
    # the ingestion task: a trace of its own, with its embedding calls inside
    task = next(s for s in spans if s.name == "task ingest_document")
    assert task.parent_span_id == "" and task.attributes["metis.task.outcome"] == "completed"
    assert any(s.name == "embed" and s.trace_id == task.trace_id for s in spans)
    # log lines written while serving carry the trace and span ids
    lines = [json.loads(ln) for ln in buf.getvalue().splitlines() if ln.strip()]
    access = [ln for ln in lines if ln["logger"] == "metis.access"]
    first = next(ln for ln in access if ln.get("trace_id") == CLIENT_TRACE
                 and ln["path"] == "/api/chat/query")
    assert first["span_id"] == root.span_id


async def test_the_standard_otel_variable_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        t = tracing.Tracing(ObservabilitySettings())
        assert t.configured
        t.start()
        try:
            with tracing.span("outer"), tracing.span("inner"):
                trace_id = tracing.current_trace_id()
        finally:
            t.close()
        spans = receiver.spans()
    assert [s.name for s in spans] == ["inner", "outer"]
    assert {s.trace_id for s in spans} == {trace_id}


async def test_traced_functions_nest_and_record_errors() -> None:
    exporter = InMemorySpanExporter()
    t = tracing.Tracing(ObservabilitySettings(), exporter=exporter, batch=False)

    @tracing.traced("work", lambda n: {"n": n}, lambda out: {"out": out})
    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return square(n)

    @tracing.traced("square")
    def square(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * n

    assert await work(3) == 9  # off: plain calls
    t.start()
    try:
        assert await work(4) == 16
        with pytest.raises(ValueError):
            await work(-1)
    finally:
        t.close()
    assert await work(5) == 25 and tracing.current_trace_id() is None
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["square", "work", "square", "work"]
    sq, wk = spans[0], spans[1]
    assert sq.parent is not None and sq.parent.span_id == wk.context.span_id
    assert dict(wk.attributes or {}) == {"n": 4, "out": 16}
    assert spans[3].status.status_code.name == "ERROR"
    assert spans[3].events[0].name == "exception"


def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    t = tracing.Tracing(ObservabilitySettings(otlp_endpoint="http://127.0.0.1:9"))
    with pytest.raises(MissingDependency) as caught:
        t.start()
    assert "pip install 'metis-rag[otel]'" in caught.value.message
    assert not tracing.enabled()
