"""/api/keys and /api/audit: a tenant's admins manage its keys and read its audit log;
/api/me: who the caller's key is."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..tenancy import keys
from ..tenancy.audit import query_audit
from ..tenancy.keys import KeyInfo
from .deps import AdminDep, ReaderDep, ServicesDep

router = APIRouter(prefix="/api", tags=["admin"])


class KeyCreate(BaseModel):
    role: Literal["reader", "writer", "admin"]
    name: str = Field("", max_length=200, description="What the key is for.")


class KeyOut(BaseModel):
    id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class NewKey(KeyOut):
    key: str = Field(description="Shown once: only its hash is stored.")


class KeyPage(BaseModel):
    items: list[KeyOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    tenant: str
    actor: str = Field(description="The key's id (never the key).")
    action: str
    target: str
    outcome: Literal["ok", "refused", "failed"]
    status: int
    client: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


class MeOut(BaseModel):
    tenant: str
    role: Literal["reader", "writer", "admin"]
    key_id: str = Field(description="The key's public id; empty when the server uses no keys.")
    keys_in_use: bool = Field(description="false: the server asks no key (one tenant).")


@router.get("/me", response_model=MeOut, summary="The caller's tenant and role")
async def me(who: ReaderDep) -> MeOut:
    return MeOut(tenant=who.tenant, role=who.role, key_id=who.key_id, keys_in_use=who.scoped)


def _out(info: KeyInfo) -> dict[str, Any]:
    return {"id": info.id, "tenant": info.tenant, "role": info.role, "name": info.name,
            "created_at": info.created_at, "revoked_at": info.revoked_at}


@router.get("/keys", response_model=KeyPage, summary="The tenant's keys (never the keys)")
async def list_keys(services: ServicesDep, who: AdminDep) -> KeyPage:
    async with services.sessions() as session:
        found = await keys.list_keys(session, who.tenant)
    return KeyPage(items=[KeyOut(**_out(k)) for k in found])


@router.post("/keys", response_model=NewKey, status_code=201,
             summary="A new key of the caller's tenant, shown once")
async def create_key(body: KeyCreate, services: ServicesDep, who: AdminDep) -> NewKey:
    async with services.sessions() as session, session.begin():
        info, key = await keys.create_key(session, who.tenant, body.role, body.name)
    await services.keyring.reload()
    return NewKey(**_out(info), key=key)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke a key of the tenant")
async def revoke_key(key_id: str, services: ServicesDep, who: AdminDep) -> KeyOut:
    async with services.sessions() as session, session.begin():
        info = await keys.revoke_key(session, who.tenant, key_id)
    await services.keyring.reload()
    return KeyOut(**_out(info))


@router.post("/keys/{key_id}/rotate", response_model=NewKey, status_code=201,
             summary="Replace a key by a new one (same role); the old one stops working")
async def rotate_key(key_id: str, services: ServicesDep, who: AdminDep) -> NewKey:
    async with services.sessions() as session, session.begin():
        info, key = await keys.rotate_key(session, who.tenant, key_id)
    await services.keyring.reload()
    return NewKey(**_out(info), key=key)


@router.get("/audit", response_model=AuditPage, summary="The tenant's audit log, newest first")
async def audit_log(
    services: ServicesDep,
    who: AdminDep,
    action: Annotated[str | None, Query(max_length=40)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Literal["ok", "refused", "failed"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    await services.audit.flush()
    async with services.sessions() as session:
        rows, total = await query_audit(session, who.tenant, action=action, actor=actor,
                                        outcome=outcome, since=since, until=until,
                                        limit=limit, offset=offset)
    items = [AuditOut.model_validate(r, from_attributes=True) for r in rows]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
