"""/api/collections and /api/facets: what a tenant's documents are grouped and filtered by."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..store import browse, repo
from .deps import ReaderDep, ServicesDep

router = APIRouter(prefix="/api", tags=["documents"])


class CollectionOut(BaseModel):
    name: str
    documents: int
    chunks: int
    size_bytes: int
    failed: int = Field(description="Documents whose ingestion failed.")
    updated_at: datetime


class CollectionList(BaseModel):
    items: list[CollectionOut]


class FacetValue(BaseModel):
    value: str
    documents: int


class FacetsOut(BaseModel):
    collection: str | None
    tags: list[FacetValue]
    folders: list[FacetValue]
    statuses: list[FacetValue]
    types: list[FacetValue]


@router.get("/collections", response_model=CollectionList,
            summary="The tenant's collections with their document, chunk and byte counts")
async def list_collections(services: ServicesDep, who: ReaderDep) -> CollectionList:
    async with services.sessions() as session:
        rows = await browse.collections_with_counts(session, who.tenant)
    return CollectionList(items=[CollectionOut(
        name=r.name, documents=r.documents, chunks=r.chunks, size_bytes=r.size_bytes,
        failed=r.failed, updated_at=r.updated_at) for r in rows])


@router.get("/facets", response_model=FacetsOut,
            summary="Tags, folders, statuses and types of the documents, with their counts")
async def document_facets(
    services: ServicesDep, who: ReaderDep, collection: str | None = None
) -> FacetsOut:
    async with services.sessions() as session:
        collection_id = ((await repo.get_collection(session, who.tenant, collection)).id
                         if collection else None)
        found = await browse.facets(session, who.tenant, collection_id)

    def values(pairs: list[tuple[str, int]]) -> list[FacetValue]:
        return [FacetValue(value=v, documents=n) for v, n in pairs]

    return FacetsOut(collection=collection, tags=values(found.tags),
                     folders=values(found.folders), statuses=values(found.statuses),
                     types=values(found.types))
