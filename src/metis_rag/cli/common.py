"""What every `metis` command group shares: consoles, common options, running a coroutine
with the app's services, and finding a running server."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..config import Settings
from ..errors import MetisError
from ..services import Services, open_services
from ..tenancy.principal import Principal, check_tenant

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Overrides METIS_DATA_DIR.", show_default=False)
]
CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Defaults to METIS_DEFAULT_COLLECTION.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="The tenant to work in.")]


def _operator(services: Services, tenant: str) -> Principal:
    """The CLI acts as an admin of one tenant (`default` unless --tenant names another)."""
    return Principal(check_tenant(tenant), "admin", scoped=services.keyring.enabled)


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir else Settings()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except MetisError as exc:
        err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(2) from None


async def _with_services(settings: Settings, fn: Any) -> Any:
    async with open_services(settings, role="client") as services:
        return await fn(services)


ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help="A running Metis (default: METIS_HOST:METIS_PORT, if up)."),
]


ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="METIS_API_KEY", show_envvar=True,
                 help="The key a server with API keys needs (sent as X-API-Key)."),
]


def _server_json(method: str, url: str, api_key: str | None, timeout_s: float,
                 **kwargs: Any) -> Any:
    """One call to a running server with the API key; its error as a sentence, exit code 2."""
    import httpx

    r = httpx.request(method, url, timeout=timeout_s, **kwargs,
                      headers={"X-API-Key": api_key} if api_key else None)
    if r.status_code >= 400:
        try:
            body = r.json()
            code, message = body.get("code"), body.get("message")
        except ValueError:
            code, message = r.status_code, r.text[:200]
        err_console.print(f"[red]error[/red] ({code}): {message}")
        raise typer.Exit(2)
    return r.json()


def _server(settings: Settings, url: str | None) -> str | None:
    """The URL of a running server for this data dir, or None to work in-process."""
    import httpx

    url = url or f"http://{settings.host}:{settings.port}"
    try:
        httpx.get(url + "/api/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    return url
