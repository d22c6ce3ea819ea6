"""The process log of one agent query, and the audit report built from it.

Events are collected in memory while the query runs and written in one transaction when it
ends (a failure writes nothing half-way). Reads are tenant-scoped: another tenant's query id
is a plain 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import NotFound
from .models import AgentEvent, AgentQuery

_MAX_TEXT = 4000  # of one input or output value in the log


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…"
    if isinstance(value, dict):
        return {str(k): _clip(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clip(v) for v in value[:100]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:_MAX_TEXT]


@dataclass(slots=True)
class ProcessLog:
    tenant: str
    collection: str
    question: str
    clock: Callable[[], float]
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.clock()

    def now_ms(self) -> float:
        return (self.clock() - self.started) * 1000

    def add(self, kind: str, *, step_id: str = "", name: str = "", status: str = "ok",
            input: dict[str, Any] | None = None, output: dict[str, Any] | None = None,
            started_ms: float | None = None, elapsed_ms: float = 0.0, tokens: int = 0,
            cost: float = 0.0, cache_level: str | None = None) -> None:
        self.events.append({
            "seq": len(self.events) + 1, "kind": kind, "step_id": step_id, "name": name,
            "status": status, "input": _clip(input or {}), "output": _clip(output or {}),
            "started_ms": round(self.now_ms() if started_ms is None else started_ms, 3),
            "elapsed_ms": round(elapsed_ms, 3), "tokens": tokens, "cost": round(cost, 6),
            "cache_level": cache_level})

    async def save(self, sessions: async_sessionmaker[AsyncSession], *, analysis: str,
                   plan: dict[str, Any], answer: str, scores: dict[str, Any], rounds: int,
                   conversation_id: str) -> None:
        tokens = sum(e["tokens"] for e in self.events)
        cost = sum(e["cost"] for e in self.events)
        async with sessions() as session, session.begin():
            session.add(AgentQuery(
                id=self.id, tenant=self.tenant, collection=self.collection,
                conversation_id=conversation_id, question=self.question, analysis=analysis,
                # The model's text may hold a NUL, which PostgreSQL text cannot: U+FFFD in its
                # place, on every database (saving failed the whole answer with a 500).
                plan=_clip(plan), answer=answer.replace("\x00", "\ufffd"), scores=_clip(scores),
                rounds=rounds,
                total_ms=round(self.now_ms(), 3), tokens=tokens, cost=round(cost, 6)))
            await session.flush()  # the query row before its events (foreign key)
            session.add_all(AgentEvent(query_id=self.id, **e) for e in self.events)


async def load_audit(sessions: async_sessionmaker[AsyncSession], tenant: str,
                     query_id: str) -> dict[str, Any]:
    async with sessions() as session:
        query = await session.get(AgentQuery, query_id)
        if query is None or query.tenant != tenant:
            raise NotFound(f"Agent query {query_id[:40]} does not exist.",
                           code="agent_query_not_found")
        rows = (await session.scalars(select(AgentEvent).where(AgentEvent.query_id == query_id)
                                      .order_by(AgentEvent.seq))).all()
    return {
        "id": query.id, "tenant": query.tenant, "collection": query.collection,
        "conversation_id": query.conversation_id, "question": query.question,
        "analysis": query.analysis, "plan": query.plan, "answer": query.answer,
        "scores": query.scores, "rounds": query.rounds, "total_ms": query.total_ms,
        "tokens": query.tokens, "cost": query.cost, "created_at": query.created_at.isoformat(),
        "events": [{c: getattr(r, c) for c in (
            "seq", "kind", "step_id", "name", "status", "input", "output", "started_ms",
            "elapsed_ms", "tokens", "cost", "cache_level")} for r in rows],
    }


def _brief(value: Any, limit: int = 300) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if k != "sentences")
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def audit_markdown(audit: dict[str, Any]) -> str:
    scores = audit["scores"] or {}
    out = [f"# Agent query {audit['id']}", "",
           f"**Question:** {audit['question']}", "",
           f"- collection: {audit['collection']}; analysis: {audit['analysis']}; "
           f"planner: {audit['plan'].get('planner', '')}",
           f"- total {audit['total_ms']:.1f} ms; {audit['tokens']} tokens; cost "
           f"{audit['cost']:.6f}; refinement rounds: {audit['rounds']}",
           "- scores: " + ", ".join(f"{k} {scores[k]}" for k in
                                    ("groundedness", "relevance", "completeness") if k in scores),
           "", "## Answer", "", audit["answer"], "", "## Process", "",
           "| # | kind | step | name | status | start ms | ms | tokens | cache | input | output |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in audit["events"]:
        cells = [str(e["seq"]), e["kind"], e["step_id"], e["name"], e["status"],
                 f"{e['started_ms']:.1f}", f"{e['elapsed_ms']:.1f}", str(e["tokens"]),
                 e["cache_level"] or "", _brief(e["input"]), _brief(e["output"])]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells)
                   + " |")
    return "\n".join(out) + "\n"


def audit_html(audit: dict[str, Any]) -> str:
    esc = html.escape
    scores = audit["scores"] or {}
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in (
            e["seq"], e["kind"], e["step_id"], e["name"], e["status"], f"{e['started_ms']:.1f}",
            f"{e['elapsed_ms']:.1f}", e["tokens"], e["cache_level"] or "", _brief(e["input"]),
            _brief(e["output"]))) + "</tr>" for e in audit["events"])
    score_text = ", ".join(f"{k} {scores[k]}" for k in
                           ("groundedness", "relevance", "completeness") if k in scores)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Agent query "
        f"{esc(audit['id'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top;font-size:13px}</style></head><body>"
        f"<h1>Agent query {esc(audit['id'])}</h1><p><b>Question:</b> {esc(audit['question'])}</p>"
        f"<p>collection {esc(audit['collection'])}; analysis {esc(audit['analysis'])}; "
        f"total {audit['total_ms']:.1f} ms; {audit['tokens']} tokens; cost "
        f"{audit['cost']:.6f}; refinement rounds {audit['rounds']}</p>"
        f"<p><b>Scores:</b> {esc(score_text)}</p><h2>Answer</h2><p>{esc(audit['answer'])}</p>"
        "<h2>Process</h2><table><tr><th>#</th><th>kind</th><th>step</th><th>name</th>"
        "<th>status</th><th>start ms</th><th>ms</th><th>tokens</th><th>cache</th><th>input</th>"
        f"<th>output</th></tr>{rows}</table></body></html>")
