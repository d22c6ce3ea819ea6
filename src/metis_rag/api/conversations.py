"""/api/conversations: a tenant's conversations, to list, read, rename and delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from ..schemas import NO_NUL, ConversationOut, MessageOut
from ..store import browse, repo
from ..store.models import Collection
from .deps import ReaderDep, ServicesDep, WriterDep

router = APIRouter(prefix="/api", tags=["chat"])


class ConversationSummary(BaseModel):
    id: str
    collection: str
    title: str
    messages: int
    created_at: datetime
    updated_at: datetime


class ConversationPage(BaseModel):
    items: list[ConversationSummary]
    total: int
    limit: int
    offset: int


class ConversationRename(BaseModel):
    title: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


@router.get("/conversations", response_model=ConversationPage,
            summary="The tenant's conversations, the most recently used first")
async def list_conversations(
    services: ServicesDep,
    who: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> ConversationPage:
    await services.conversations.flush()
    async with services.sessions() as session:
        rows, total = await browse.list_conversations(session, who.tenant, limit=limit,
                                                      offset=offset)
    return ConversationPage(
        items=[ConversationSummary(id=r.id, collection=r.collection, title=r.title,
                                   messages=r.messages, created_at=r.created_at,
                                   updated_at=r.updated_at) for r in rows],
        total=total, limit=limit, offset=offset)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: str, services: ServicesDep, who: ReaderDep
) -> ConversationOut:
    await services.conversations.flush()
    async with services.sessions() as session:
        conv = await repo.get_conversation(session, who.tenant, conversation_id)
        coll = await session.get_one(Collection, conv.collection_id)
        messages = await repo.recent_messages(session, conv.id, 10_000)
    return ConversationOut(
        id=conv.id, collection=coll.name, title=conv.title, created_at=conv.created_at,
        messages=[MessageOut.model_validate(m) for m in messages],
    )


@router.patch("/conversations/{conversation_id}", response_model=ConversationSummary,
              summary="Rename a conversation")
async def rename_conversation(
    conversation_id: str, body: ConversationRename, services: ServicesDep, who: WriterDep
) -> ConversationSummary:
    await services.conversations.flush()
    async with services.sessions() as session, session.begin():
        conv = await browse.rename_conversation(session, who.tenant, conversation_id,
                                                body.title.strip() or body.title)
        coll = await session.get_one(Collection, conv.collection_id)
        count = len(await repo.recent_messages(session, conv.id, 10_000))
        return ConversationSummary(id=conv.id, collection=coll.name, title=conv.title,
                                   messages=count, created_at=conv.created_at,
                                   updated_at=conv.updated_at)


@router.delete("/conversations/{conversation_id}", status_code=204,
               summary="Delete a conversation and its messages")
async def delete_conversation(
    conversation_id: str, services: ServicesDep, who: WriterDep
) -> Response:
    await services.conversations.flush()
    async with services.sessions() as session, session.begin():
        await browse.delete_conversation(session, who.tenant, conversation_id)
    return Response(status_code=204)
