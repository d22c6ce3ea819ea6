"""/api/keys and /api/audit: a tenant's admins manage its keys and read its audit log (an
operator reads every tenant's); /api/me: who the caller's key is."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..errors import Forbidden
from ..schemas import NO_NUL
from ..tenancy import keys
from ..tenancy.audit import query_audit
from ..tenancy.keys import KeyInfo
from ..tenancy.principal import Principal, Role
from .deps import AdminDep, ReaderDep, ServicesDep, tenant_scope

router = APIRouter(prefix="/api", tags=["admin"])


class KeyCreate(BaseModel):
    role: Literal["reader", "writer", "admin", "operator"] = Field(
        description="At most the caller's own role.")
    name: str = Field("", max_length=200, pattern=NO_NUL, description="What the key is for.")


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
    trace_id: str = Field(description="The OpenTelemetry trace id when tracing is on, else the "
                          "request id (X-Request-ID).")


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


class Me(BaseModel):
    tenant: str
    role: Literal["reader", "writer", "admin", "operator"]
    key_id: str = Field(description="The key's public id; empty without API keys.")
    keys_in_use: bool = Field(description="False: a single-tenant server without API keys.")


@router.get("/me", response_model=Me, summary="The caller's tenant and role")
async def me(who: ReaderDep) -> Me:
    return Me(tenant=who.tenant, role=who.role, key_id=who.key_id, keys_in_use=who.scoped)


def _grantable(who: Principal, role: str) -> None:
    """No key makes or changes a key above its own role (an admin cannot mint an operator)."""
    if not who.allows(role):  # type: ignore[arg-type]
        raise Forbidden(f"A {who.role} key cannot manage {role} keys.")


async def _managed(services: ServicesDep, who: Principal, key_id: str) -> None:
    async with services.sessions() as session:
        found = await keys.list_keys(session, who.tenant)
    role: Role | None = next((k.role for k in found if k.id == key_id), None)  # type: ignore[misc]
    if role is not None:  # a missing key is the 404 of revoke/rotate
        _grantable(who, role)


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
    _grantable(who, body.role)
    async with services.sessions() as session, session.begin():
        info, key = await keys.create_key(session, who.tenant, body.role, body.name)
    await services.keyring.reload()
    return NewKey(**_out(info), key=key)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke a key of the tenant")
async def revoke_key(key_id: str, services: ServicesDep, who: AdminDep) -> KeyOut:
    await _managed(services, who, key_id)
    async with services.sessions() as session, session.begin():
        info = await keys.revoke_key(session, who.tenant, key_id)
    await services.keyring.reload()
    return KeyOut(**_out(info))


@router.post("/keys/{key_id}/rotate", response_model=NewKey, status_code=201,
             summary="Replace a key by a new one (same role); the old one stops working")
async def rotate_key(key_id: str, services: ServicesDep, who: AdminDep) -> NewKey:
    await _managed(services, who, key_id)
    async with services.sessions() as session, session.begin():
        info, key = await keys.rotate_key(session, who.tenant, key_id)
    await services.keyring.reload()
    return NewKey(**_out(info), key=key)


@router.get("/audit", response_model=AuditPage,
            summary="The tenant's audit log, newest first (an operator's: any tenant's)")
async def audit_log(
    services: ServicesDep,
    who: AdminDep,
    action: Annotated[str | None, Query(max_length=40)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Literal["ok", "refused", "failed"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    trace_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    tenant: Annotated[str | None, Query(max_length=64, description="Another tenant's log "
                                        "(operators).")] = None,
    all_tenants: Annotated[bool, Query(description="Every tenant's records (operators).")] = False,
) -> AuditPage:
    if tenant is not None and tenant != who.tenant:
        who.require("operator")
    scope = tenant_scope(who, all_tenants) if tenant is None else tenant
    await services.audit.flush()
    async with services.sessions() as session:
        rows, total = await query_audit(session, scope, action=action, actor=actor,
                                        outcome=outcome, since=since, until=until,
                                        trace_id=trace_id,
                                        limit=limit, offset=offset)
    items = [AuditOut.model_validate(r, from_attributes=True) for r in rows]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
