"""/api/chat/query and /api/conversations: questions, answers with citations, history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from ..errors import MetisError
from ..schemas import ChatAnswer, ChatQuery, ConversationOut, MessageOut
from ..store import repo
from ..store.models import Collection
from .deps import ServicesDep

router = APIRouter(prefix="/api", tags=["chat"])
log_name = "metis.chat"


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.post(
    "/chat/query",
    response_model=ChatAnswer,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "JSON, or server-sent events when stream is true: "
                                    "token events, then citations, then done."}},
)
async def query(
    body: ChatQuery,
    services: ServicesDep,
    x_metis_namespace: Annotated[str | None, Header(max_length=100)] = None,
) -> Any:
    if not body.stream:
        answer = await services.chat.answer(body, x_metis_namespace)
        services.metrics.observe_answer(answer)
        return answer
    events = services.chat.stream(body, x_metis_namespace)
    # Fail before the stream starts (404, 422...) so clients get a real status code.
    first = await anext(events)

    async def gen() -> AsyncIterator[bytes]:
        item: tuple[str, Any] | None = first
        try:
            while item is not None:
                kind, data = item
                if kind == "done":
                    services.metrics.observe_answer(data)
                    yield _sse("done", orjson.loads(data.model_dump_json()))
                else:
                    yield _sse(kind, {"text": data} if kind == "token" else data)
                item = await anext(events, None)
        except MetisError as exc:
            yield _sse("error", exc.to_dict())

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(conversation_id: str, services: ServicesDep) -> ConversationOut:
    await services.conversations.flush()
    async with services.sessions() as session:
        conv = await repo.get_conversation(session, conversation_id)
        coll = await session.get_one(Collection, conv.collection_id)
        messages = await repo.recent_messages(session, conv.id, 10_000)
    return ConversationOut(
        id=conv.id, collection=coll.name, title=conv.title, created_at=conv.created_at,
        messages=[MessageOut.model_validate(m) for m in messages],
    )
