"""Audit records carry the request's trace id (OpenTelemetry's when tracing is on, else the
request id), and `GET /api/audit?trace_id=` finds them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from metis_rag.config import Settings
from metis_rag.devtools.otlp_receiver import OtlpReceiver
from tests.tenancy.test_keys_audit_quotas import cli
from tests.tenancy.test_matrix import KEYS, serving

pytestmark = pytest.mark.slow

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def no_standard_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


async def test_without_tracing_the_request_id_is_the_trace_id(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(api_keys=KEYS)
    async with serving(settings) as (_, client):
        async with client("acme", "writer") as w:
            mine = await w.post("/api/chat/query", headers={"X-Request-ID": "req-audit-123"},
                                json={"message": "Who audits the auditors?"})
            made = await w.post("/api/chat/query", json={"message": "And who audits them?"})
        async with client("acme", "admin") as admin:
            r = await admin.get("/api/audit", params={"trace_id": "req-audit-123"})
            items = r.json()["items"]
            assert [(i["action"], i["trace_id"], i["status"]) for i in items] == [
                ("question", "req-audit-123", mine.status_code)]
            server_made = made.headers["x-request-id"]  # the id the server made and echoed
            r = await admin.get("/api/audit", params={"trace_id": server_made})
            assert [i["trace_id"] for i in r.json()["items"]] == [server_made]
        async with client("globex", "admin") as other:  # another tenant's trace: not found
            r = await other.get("/api/audit", params={"trace_id": "req-audit-123"})
            assert r.json()["items"] == [] and r.json()["total"] == 0
    # The CLI filters the same way: one request's records, only in its own tenant.
    text = await asyncio.to_thread(cli, settings, "audit", "--tenant", "acme",
                                   "--trace-id", "req-audit-123", "--json")
    assert [(r["action"], r["trace_id"]) for r in json.loads(text)] == [
        ("question", "req-audit-123")]
    text = await asyncio.to_thread(cli, settings, "audit", "--tenant", "globex",
                                   "--trace-id", "req-audit-123", "--json")
    assert json.loads(text) == []


async def test_with_tracing_the_opentelemetry_trace_id(
    make_settings: Callable[..., Settings],
) -> None:
    with OtlpReceiver() as receiver:
        settings = make_settings(api_keys=KEYS, observability={"otlp_endpoint": receiver.url})
        async with serving(settings) as (_, client):
            async with client("acme", "writer") as w:
                r = await w.post("/api/chat/query", json={"message": "Traced?"}, headers={
                    "traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01",
                    "X-Request-ID": "req-traced-1"})
                assert r.headers["x-request-id"] == "req-traced-1"
            async with client("acme", "admin") as admin:
                items = (await admin.get("/api/audit", params={"trace_id": CLIENT_TRACE})
                         ).json()["items"]
                assert [(i["action"], i["trace_id"]) for i in items] == [("question", CLIENT_TRACE)]
                r = await admin.get("/api/audit", params={"trace_id": "req-traced-1"})
                assert r.json()["items"] == []
        spans = receiver.spans()
    assert any(s.trace_id == CLIENT_TRACE and s.name == "POST /api/chat/query" for s in spans)
