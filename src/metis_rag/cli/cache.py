"""`metis cache`: statistics and invalidation, through a running server when there is one."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import MetisError
from ..services import Services
from ..tenancy.principal import DEFAULT_TENANT, check_tenant
from .common import (
    ApiKeyOpt,
    CollectionOpt,
    DataDir,
    ServerOpt,
    TenantOpt,
    _operator,
    _run,
    _server,
    _server_json,
    _settings,
    _with_services,
    console,
)

cache_app = typer.Typer(help="Cache statistics and invalidation.", no_args_is_help=True)


@cache_app.command("stats")
def cache_stats(data_dir: DataDir = None, server: ServerOpt = None,
                api_key: ApiKeyOpt = None) -> None:
    """Per-level hits, misses, hit ratio, entries, bytes, evictions, errors, latency, savings.

    Counters live in the server process: asks the running server (one with API keys needs an
    operator key); without one, shows what the persistent tier holds."""
    settings = _settings(data_dir)
    url = _server(settings, server)
    if url is not None:
        stats = _server_json("GET", url + "/api/cache/stats", api_key, 10)
    else:
        async def fn(services: Services) -> Any:
            if services.caches is None:
                raise MetisError("The cache is disabled.", code="cache_disabled")
            return await services.caches.stats()

        stats = _run(_with_services(settings, fn))
    for table in stats_tables(stats):
        console.print(table)
    console.print(f"LLM calls saved: {stats['llm_calls_saved']}, tokens saved: "
                  f"{stats['tokens_saved']}, estimated cost saved: "
                  f"${stats['estimated_cost_saved']:.4f}")
    if url is None:
        console.print("(no server running: counters of this process only)")


def stats_tables(stats: dict[str, Any]) -> list[Table]:
    """`metis cache stats` as tables that fit 80 columns: counts per level, times per level,
    then the tiers (one ten-column table wrapped every header and number at 80)."""
    counts = Table("level", "hits", "misses", "hit ratio", "entries", "bytes", "errors")
    times = Table("level", "mean hit ms", "mean miss ms", "saved ms")
    for name, lv in stats["levels"].items():
        counts.add_row(name, str(lv["hits"]), str(lv["misses"]), f"{lv['hit_ratio']:.1%}",
                       _known(lv.get("entries")), _known(lv.get("bytes")),
                       str(lv.get("errors", 0)))
        times.add_row(name, f"{lv.get('mean_hit_ms', 0):.2f}",
                      f"{lv.get('mean_miss_ms', 0):.2f}", f"{lv['saved_ms']:.0f}")
    tiers = Table("tier", "entries", "bytes", "evictions", "errors", "healthy")
    for t in stats["tiers"]:
        tiers.add_row(t["backend"], _known(t["entries"]), _known(t["bytes"]),
                      str(t["evictions"]), str(t["errors"]), str(t["healthy"]))
    for table in (counts, times, tiers):
        for column in table.columns[1:]:
            column.justify = "right"
    return [counts, times, tiers]


def _known(value: object) -> str:
    return "-" if value is None else str(value)


@cache_app.command("clear")
def cache_clear(
    namespace: Annotated[str | None, typer.Option()] = None,
    collection: CollectionOpt = None,
    level: Annotated[str | None, typer.Option(help="exact, semantic, retrieval, llm, "
                                                   "embedding or document")] = None,
    data_dir: DataDir = None,
    server: ServerOpt = None,
    tenant: TenantOpt = DEFAULT_TENANT,
    api_key: ApiKeyOpt = None,
) -> None:
    """Invalidate a collection's answers, a namespace, a level, or everything (a server with
    API keys needs an admin key: --api-key or METIS_API_KEY)."""
    settings = _settings(data_dir)
    params = {k: v for k, v in {"namespace": namespace, "collection": collection,
                                "level": level}.items() if v}
    url = _server(settings, server)
    if url is not None:
        _server_json("DELETE", url + "/api/cache", api_key, 30, params=params)
    else:
        async def fn(services: Services) -> None:
            if services.caches is None:
                raise MetisError("The cache is disabled.", code="cache_disabled")
            if collection:
                from ..store import repo

                async with services.sessions() as session, session.begin():
                    await repo.invalidate_collection(session, check_tenant(tenant), collection)
                return
            if tenant == DEFAULT_TENANT and not services.keyring.enabled:  # single tenant: all
                await services.caches.clear(namespace=namespace, level=level)
                return
            who = _operator(services, tenant)
            await services.caches.clear(
                namespace=who.namespace(namespace) if namespace else None, level=level,
                tenant_prefix=who.namespace_prefix)

        _run(_with_services(settings, fn))
    console.print("cache cleared: " + (", ".join(f"{k}={v}" for k, v in params.items()) or "all"))
