"""/api/chat/query: questions, answers with citations (streamed or whole)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..agent.stream import agent_events
from ..errors import InvalidInput, MetisError
from ..schemas import ChatAnswer, ChatQuery
from ..services import Services
from ..tenancy.principal import SINGLE_TENANT, Principal, principal_of
from .deps import READER

router = APIRouter(prefix="/api", tags=["chat"])
QUERY_PATH = "/api/chat/query"
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
    # Whole JSON answers (the hottest case: a cached one costs well under a millisecond) are
    # answered by `ChatQueryShortcut` before FastAPI's routing; they come here only when the
    # app runs without it. The body is validated by pydantic-core straight from its bytes.
    services: Services = request.state.services
    who = principal_of(request)  # every key may ask: reader is the least role
    await services.quotas.admit_question(who.tenant)
    body = _parse_query(await request.body())
    x_metis_namespace = _checked_namespace(request.headers.get(_NAMESPACE_HEADER))
    _note_audit(request.scope["state"], services, who, body)
    agent = services.agent if _wants_agent(services, body) else None
    if not body.stream:
        return Response(await _whole_answer(services, who, body, x_metis_namespace, agent),
                        media_type="application/json")
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


def _checked_namespace(header: str | None) -> str | None:
    if header is not None and len(header) > 100:
        raise InvalidInput("The X-Metis-Namespace header is longer than 100 characters.")
    return header


def _note_audit(state: dict[str, Any], services: Services, who: Principal,
                body: ChatQuery) -> None:
    """What the audit record of a scoped key's question names (`InboundLimits` writes it)."""
    if who.scoped:
        state["audit_detail"] = {"collection": body.collection or body.collections or
                                 services.settings.default_collection}


async def _whole_answer(services: Services, who: Principal, body: ChatQuery,
                        namespace: str | None, agent: Any) -> bytes:
    answer = await (agent.run(body, namespace, who) if agent else
                    services.chat.answer(body, namespace, who))
    services.metrics.observe_answer(answer)
    await _spend(services, who.tenant, answer)
    return answer.__pydantic_serializer__.to_json(answer)


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


class ChatQueryShortcut:
    """Answers POST /api/chat/query in whole JSON (not streamed, not the agent's) as pure ASGI,
    the innermost middleware: every middleware outside it (keys, tenancy, audit, rate limits,
    request ids, metrics, admission, compression, upload limits) still applies, but FastAPI's
    routing, exception and dependency layers, a third of a cached answer's time, are skipped.
    The route does the same work in the same order; errors get the app's responses
    (`render_error`). Anything else, and a body that does not parse, goes to the route."""

    def __init__(self, app: ASGIApp, route: BaseRoute | None,
                 render_error: Callable[[Exception], Response | None]) -> None:
        self.app = app
        self.route = route  # the route the request counts under in metrics and traces
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != QUERY_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        services: Services | None = state.get("services")
        read: list[Message] = []
        try:
            raw = await _read_body(receive, read)
        except Exception as exc:  # over the upload limit while reading
            await self._refuse(exc, scope, receive, send)
            return
        body = _parse_or_none(raw) if raw is not None and services is not None else None
        if body is None or body.stream or _wants_agent(services, body):  # type: ignore[arg-type]
            await self.app(scope, _replaying(read, receive), send)
            return
        assert services is not None
        scope["route"] = self.route
        found: Principal | None = state.get("principal")  # as `principal_of` reads it
        who = found if found is not None else SINGLE_TENANT
        try:
            await services.quotas.admit_question(who.tenant)
            namespace = _checked_namespace(_header(scope, b"x-metis-namespace"))
            _note_audit(state, services, who, body)
            payload = await _whole_answer(services, who, body, namespace, None)
        except Exception as exc:
            await self._refuse(exc, scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async def _refuse(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.render_error(exc)
        if response is None:
            raise exc  # the server-error handler's, as from the route
        await response(scope, receive, send)


async def _read_body(receive: Receive, read: list[Message]) -> bytes | None:
    """The whole body (None if the client went away first); `read` keeps every message."""
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None
        if not message.get("more_body", False):
            if len(read) == 1:
                return message.get("body", b"")  # type: ignore[no-any-return]
            return b"".join(m.get("body", b"") for m in read)


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """`receive` as the route sees it: the messages the shortcut read first, again."""
    pending = list(reversed(read))

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _parse_or_none(raw: bytes) -> ChatQuery | None:
    try:
        return ChatQuery.model_validate_json(raw)
    except ValidationError:
        return None  # the route answers it: 422 after the quota, as ever


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None
