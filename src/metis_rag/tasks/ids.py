"""Task ids scoped per tenant: a client's id is unique inside its tenant, never across tenants.

The `tasks` table keys a task by `<tenant>:<id>` for every tenant but the default one (whose
ids stay bare, as before tenants), so two tenants may both choose `nightly` and neither learns
the other uses it. Neither a tenant name nor a client id may contain ':', so the mapping is
one-to-one. The API shows the id the client chose; the operator's CLI sees the stored one.
"""

from __future__ import annotations

from ..tenancy.principal import DEFAULT_TENANT

ID_MAX = 100  # 64 (tenant) + 1 + 32 (client id), with room


def scoped(tenant: str, task_id: str) -> str:
    """The stored id of the task `task_id` of `tenant`."""
    return task_id if tenant == DEFAULT_TENANT else f"{tenant}:{task_id}"


def public(stored: str) -> str:
    """The id a client of the task's tenant sees."""
    return stored.rpartition(":")[2]
