"""Named dependencies for the routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ..services import Services
from ..tenancy.principal import Principal, Role, principal_of


async def get_services(request: Request) -> Services:
    # The lifespan yields {"services": ...}; Starlette exposes it as request.state. Async on
    # purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


class Access:
    """The least role a route needs; resolves to the caller's `Principal` (403 `forbidden`
    below it). Every /api route declares one (the cross-tenant matrix test checks it)."""

    def __init__(self, role: Role) -> None:
        self.role: Role = role

    async def __call__(self, request: Request) -> Principal:
        return principal_of(request).require(self.role)


READER, WRITER, ADMIN = Access("reader"), Access("writer"), Access("admin")
OPERATOR = Access("operator")
ReaderDep = Annotated[Principal, Depends(READER)]
WriterDep = Annotated[Principal, Depends(WRITER)]
AdminDep = Annotated[Principal, Depends(ADMIN)]
OperatorDep = Annotated[Principal, Depends(OPERATOR)]


def tenant_scope(who: Principal, all_tenants: bool) -> str | None:
    """The tenant a listing is limited to; None (every tenant) only for an operator who asks."""
    if all_tenants:
        who.require("operator")
        return None
    return who.tenant
