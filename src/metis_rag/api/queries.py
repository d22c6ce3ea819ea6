"""/api/queries/{id}/audit: the process log of one agent answer (JSON, HTML or Markdown)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse

from ..agent.process_log import audit_html, audit_markdown, load_audit
from .deps import ReaderDep, ServicesDep

router = APIRouter(prefix="/api", tags=["agent"])


@router.get(
    "/queries/{query_id}/audit",
    responses={200: {"content": {"text/html": {}, "text/markdown": {}},
                     "description": "The process log: every analysis, plan, step, tool call "
                                    "(input, output, timing, tokens, cost, cache level), "
                                    "synthesis, evaluation and refinement."}},
)
async def get_audit(
    query_id: str, services: ServicesDep, who: ReaderDep,
    format: Literal["json", "html", "markdown"] = Query("json"),
) -> Any:
    audit = await load_audit(services.sessions, who.tenant, query_id)
    if format == "html":
        return HTMLResponse(audit_html(audit))
    if format == "markdown":
        return PlainTextResponse(audit_markdown(audit), media_type="text/markdown")
    return audit
