"""Who is asking: a tenant and a role, from the request's API key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from ..errors import Forbidden, InvalidInput

# `admin` runs one tenant (its keys, its audit log, its caches); `operator` runs the server: the
# views and actions that span tenants (metrics, every tenant's tasks and audit log, the shared
# cache levels). An operator key also belongs to a tenant, where it may do what an admin may.
Role = Literal["reader", "writer", "admin", "operator"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin", "operator")
_RANK = {role: i for i, role in enumerate(ROLES)}
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
DEFAULT_TENANT = "default"


def check_tenant(name: str) -> str:
    if not _TENANT_RE.match(name):
        raise InvalidInput(
            f"Tenant {name[:70]!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'.",
            code="invalid_tenant",
        )
    return name


def check_role(role: str) -> Role:
    if role not in _RANK:
        raise InvalidInput(f"Role {role[:20]!r} is not one of reader, writer, admin, operator.",
                           code="invalid_role")
    return role  # `in _RANK` narrowed it to a Role


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: Role
    key_id: str = ""  # the key's public id ("" without keys): audit actor, never the key
    scoped: bool = False  # keys are in use: cache namespaces carry the tenant

    def allows(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]

    def require(self, role: Role) -> Principal:
        if not self.allows(role):
            raise Forbidden(f"This needs a key with the {role} role; this key is {self.described}.")
        return self

    @property
    def described(self) -> str:
        article = "an" if self.role[0] in "aeiou" else "a"
        return f"{article} {self.role} of tenant {self.tenant!r}"

    def namespace(self, name: str) -> str:
        """The cache namespace a request names, inside its tenant: it can narrow, never leave."""
        if "/" in name:
            raise InvalidInput("A namespace may not contain '/'.", code="invalid_namespace")
        return f"{self.tenant}/{name}" if self.scoped else name

    @property
    def namespace_prefix(self) -> str | None:
        """Every cache namespace of the tenant starts with this (None: single tenant)."""
        return f"{self.tenant}/" if self.scoped else None


# Without API keys Metis is a single-tenant server: everything is allowed, as before tenants.
SINGLE_TENANT = Principal(DEFAULT_TENANT, "operator")


def principal_of(request: Request) -> Principal:
    """Set by `api.limits.InboundLimits` when keys are in use."""
    state = request.scope.get("state")
    found = state.get("principal") if state else None
    return found if found is not None else SINGLE_TENANT
