"""/api/chat/query: questions, answers with citations (streamed or whole)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ..agent.stream import agent_events
from ..errors import InvalidInput, MetisError
from ..schemas import ChatAnswer, ChatQuery
from ..services import Services
from ..tenancy.principal import principal_of
from .deps import READER

router = APIRouter(prefix="/api", tags=["chat"])
log_name = "metis.chat"


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_NAMESPACE_HEADER = "x-metis-namespace"


def _query_openapi() -> dict[str, Any]:
    # The body is parsed by ChatQuery itself (below), so describe it for /docs by hand.
    schema = ChatQuery.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "parameters": [{
            "name": "X-Metis-Namespace", "in": "header", "required": False,
            "description": "Cache namespace within the key's tenant (the body's namespace wins).",
            "schema": {"type": "string", "maxLength": 100},
        }],
    }


def _parse_query(body: bytes) -> ChatQuery:
    try:
        return ChatQuery.model_validate_json(body)
    except ValidationError as exc:
        # Rendered by the app's handler like any other invalid request: 422 invalid_input.
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post(
    "/chat/query",
    response_model=ChatAnswer,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "JSON, or server-sent events when stream is true: "
                                    "token events, then citations, then done (agent mode: "
                                    "step, tool_call and tool_result events first)."}},
    openapi_extra={**_query_openapi(), "x-metis-role": READER.role},
)
async def query(request: Request) -> Response:
    # The hottest route (a cached answer costs well under a millisecond), so it skips FastAPI's
    # per-request dependency solving and response re-validation: the body is validated by
    # pydantic-core straight from its bytes and the answer serialized once, by its own model.
    services: Services = request.state.services
    who = principal_of(request)  # every key may ask: reader is the least role
    await services.quotas.admit_question(who.tenant)
    body = _parse_query(await request.body())
    x_metis_namespace = request.headers.get(_NAMESPACE_HEADER)
    if x_metis_namespace is not None and len(x_metis_namespace) > 100:
        raise InvalidInput("The X-Metis-Namespace header is longer than 100 characters.")
    if who.scoped:
        request.state.audit_detail = {"collection": body.collection or body.collections or
                                      services.settings.default_collection}
    agent = services.agent if _wants_agent(services, body) else None
    if not body.stream:
        answer = await (agent.run(body, x_metis_namespace, who) if agent else
                        services.chat.answer(body, x_metis_namespace, who))
        services.metrics.observe_answer(answer)
        await _spend(services, who.tenant, answer)
        return Response(answer.model_dump_json(), media_type="application/json")
    events = (agent_events(agent, body, x_metis_namespace, who) if agent else
              services.chat.stream(body, x_metis_namespace, who))
    # Fail before the stream starts (404, 422...) so clients get a real status code.
    first = await anext(events)

    async def gen() -> AsyncIterator[bytes]:
        item: tuple[str, Any] | None = first
        try:
            while item is not None:
                kind, data = item
                if kind == "done":
                    services.metrics.observe_answer(data)
                    await _spend(services, who.tenant, data)
                    yield _sse("done", orjson.loads(data.model_dump_json()))
                else:
                    yield _sse(kind, {"text": data} if kind == "token" else data)
                item = await anext(events, None)
        except MetisError as exc:
            yield _sse("error", exc.to_dict())

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _wants_agent(services: Services, body: ChatQuery) -> bool:
    """mode=agent, or mode=auto on a question the analyser finds complex (a few microseconds
    of regular expressions; a simple question stays on the fast path)."""
    if body.mode == "fast" or services.agent is None:
        return False
    return body.mode == "agent" or not services.agent.analyse(body.message).simple


async def _spend(services: Services, tenant: str, answer: ChatAnswer) -> None:
    """LLM tokens count against the tenant's day only when a model call was made."""
    if answer.mode == "llm" and answer.cache.level in (None, "retrieval"):
        await services.quotas.spend_tokens(tenant, sum(answer.usage.values()))
