"""`metis keys` (create, list, revoke, rotate) and `metis audit`: the operator's tools, working
on the database directly (a running server picks key changes up within METIS_AUTH__RELOAD_S)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from ..cli.common import DataDir, JsonOpt, console, err_console
from ..config import Settings
from ..errors import MetisError
from . import keys
from .audit import query_audit
from .principal import check_tenant

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke, rotate.",
                       no_args_is_help=True)
T = TypeVar("T")


def _run(data_dir: Path | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    from ..services import open_services

    settings = Settings(data_dir=data_dir) if data_dir else Settings()

    async def main() -> T:
        async with open_services(settings, role="client") as services, \
                services.sessions() as session, session.begin():
            return await fn(session)

    try:
        return asyncio.run(main())
    except MetisError as exc:
        err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(2) from None


def _key_dict(info: keys.KeyInfo) -> dict[str, Any]:
    return {"id": info.id, "tenant": info.tenant, "role": info.role, "name": info.name,
            "created_at": info.created_at.isoformat(),
            "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None}


def _print_new(info: keys.KeyInfo, key: str, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({**_key_dict(info), "key": key}))
        return
    console.print(f"key {info.id}: tenant {info.tenant}, role {info.role}")
    console.print(key, markup=False, highlight=False)
    err_console.print("Store it now: only its hash is kept, it cannot be shown again.")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to.")],
    role: Annotated[str, typer.Option(help="reader, writer or admin.")],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a key and print it once."""
    info, key = _run(data_dir, lambda s: keys.create_key(s, tenant, role, name))
    _print_new(info, key, as_json)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked keys.")] = False,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
) -> None:
    """The keys in the database (ids, never the keys)."""
    found = _run(data_dir, lambda s: keys.list_keys(
        s, check_tenant(tenant) if tenant else None, revoked))
    if as_json:
        console.print_json(json.dumps([_key_dict(k) for k in found]))
        return
    table = Table("id", "tenant", "role", "name", "created", "revoked")
    for k in found:
        table.add_row(k.id, k.tenant, k.role, k.name, k.created_at.isoformat(timespec="seconds"),
                      k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke a key: refused by servers within METIS_AUTH__RELOAD_S."""
    info = _run(data_dir, lambda s: keys.revoke_key(s, None, key_id))
    console.print(f"revoked key {info.id} (tenant {info.tenant}, role {info.role})")


@keys_app.command("rotate")
def keys_rotate(key_id: str, data_dir: DataDir = None, as_json: JsonOpt = False) -> None:
    """Replace a key by a new one with the same tenant and role, and revoke it."""
    info, key = _run(data_dir, lambda s: keys.rotate_key(s, None, key_id))
    _print_new(info, key, as_json)


def audit(
    tenant: Annotated[str, typer.Option(help="The tenant whose log to read.")] = "default",
    action: Annotated[str | None, typer.Option(help="e.g. question, document.upload.")] = None,
    actor: Annotated[str | None, typer.Option(help="A key id.")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, refused or failed.")] = None,
    since: Annotated[datetime | None, typer.Option(help="ISO 8601, UTC.")] = None,
    until: Annotated[datetime | None, typer.Option(help="ISO 8601, UTC.")] = None,
    trace_id: Annotated[str | None, typer.Option(
        help="The records of one request: its W3C trace id (32 hex digits, as in a log line).",
    )] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log of a tenant, newest first: who did what, when, from where, and how it went."""
    rows, total = _run(data_dir, lambda s: query_audit(
        s, check_tenant(tenant), action=action, actor=actor, outcome=outcome, since=since,
        until=until, trace_id=trace_id, limit=limit))
    if as_json:
        console.print_json(json.dumps([
            {"id": r.id, "at": r.at.isoformat(), "tenant": r.tenant, "actor": r.actor,
             "action": r.action, "target": r.target, "outcome": r.outcome, "status": r.status,
             "client": r.client, "trace_id": r.trace_id, "detail": r.detail} for r in rows]))
        return
    table = Table("at", "actor", "action", "target", "outcome", "status", "client")
    for r in rows:
        table.add_row(r.at.isoformat(timespec="seconds"), r.actor, r.action, r.target,
                      r.outcome, str(r.status), r.client)
    console.print(table)
    console.print(f"{len(rows)} of {total}")
