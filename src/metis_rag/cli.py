"""The `metis` command: serve, ingest, ask, docs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import Settings
from .errors import MetisError
from .ingest.parsers import SUPPORTED
from .ingest.pipeline import IngestResult
from .schemas import ChatAnswer, ChatQuery
from .services import Services, open_services
from .tasks.cli import ingest_as_tasks, tasks_app, worker
from .tenancy.cli import audit, keys_app
from .tenancy.principal import DEFAULT_TENANT, Principal, check_tenant

app = typer.Typer(help="Metis: a fast, frugal RAG server.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
docs_app = typer.Typer(help="List, show and delete documents.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
cache_app = typer.Typer(help="Cache statistics and invalidation.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.add_typer(tasks_app, name="tasks")
app.command("worker")(worker)
app.add_typer(keys_app, name="keys")
app.command("audit")(audit)
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


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Overrides METIS_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides METIS_PORT.")] = None,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from .app import create_app

    settings = _settings(data_dir)
    update = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=update)
    # log_config=None: uvicorn's loggers go through Metis's structured logging (create_app sets
    # it up); access_log=False: Metis writes its own access line, with the request id.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, loop="auto", http="auto",
                log_config=None, access_log=False)


def _walk(paths: list[Path], folder: str) -> Iterator[tuple[Path, str]]:
    for root in paths:
        if root.is_file():
            yield root, folder
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower().lstrip(".") in SUPPORTED:
                rel = path.parent.relative_to(root).as_posix()
                yield path, "/".join(p for p in (folder, rel) if p and p != ".")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files or directories.")],
    collection: CollectionOpt = None,
    tags: Annotated[str, typer.Option(help="Comma-separated tags for every file.")] = "",
    folder: Annotated[str, typer.Option(help="Folder prefix stored with each document.")] = "",
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
    tenant: TenantOpt = DEFAULT_TENANT,
) -> None:
    """Ingest files (txt, md, html, pdf, docx); unchanged files are skipped, changed ones replaced."""
    settings = _settings(data_dir)
    name = collection or settings.default_collection
    files = list(_walk(paths, folder))
    tag_list = tuple(t.strip() for t in tags.split(",") if t.strip())

    async def main() -> list[IngestResult]:
        # Each file is an ingest_document task of this process's engine (or of the Celery
        # workers), so a kill -9 here is finished by the next start: nothing half-stored.
        async with open_services(settings) as services:
            with Progress(TextColumn("[bold]ingesting"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[chunks]} chunks"), TimeElapsedColumn(),
                          console=err_console, disable=as_json) as progress:
                bar = progress.add_task("files", total=len(files), chunks=0)
                return await ingest_as_tasks(services, files, name, tag_list, progress, bar,
                                             check_tenant(tenant))

    started = time.perf_counter()
    results = _run(main())
    seconds = time.perf_counter() - started
    new_chunks = sum(r.chunks for r in results if r.status in ("created", "replaced"))
    summary = {
        "collection": name,
        "files": len(results),
        "created": sum(r.status == "created" for r in results),
        "replaced": sum(r.status == "replaced" for r in results),
        "duplicates": sum(r.status == "duplicate" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "chunks": new_chunks,
        "seconds": round(seconds, 2),
        "chunks_per_s": round(new_chunks / seconds, 1) if seconds else 0.0,
    }
    failures = [r for r in results if r.status == "failed"]
    if as_json:
        summary["results"] = [_result_dict(r) for r in results]
        console.print_json(json.dumps(summary, default=str))
    else:
        for r in failures:
            err = r.error or {}
            err_console.print(f"[red]failed[/red] {r.filename}: {err.get('message')}")
        console.print(
            f"{summary['files']} files ({summary['created']} new, {summary['replaced']} replaced, "
            f"{summary['duplicates']} unchanged, {summary['failed']} failed), "
            f"{new_chunks} chunks in {summary['seconds']} s: {summary['chunks_per_s']} chunks/s"
        )
    if failures and len(failures) == len(results):
        raise typer.Exit(1)


def _result_dict(r: IngestResult) -> dict[str, Any]:
    return {"filename": r.filename, "status": r.status, "document_id": r.document_id,
            "chunks": r.chunks, "error": r.error}


def _print_answer(answer: ChatAnswer) -> None:
    console.print(answer.answer, highlight=False)
    if answer.warnings:
        for w in answer.warnings:
            err_console.print(f"[yellow]warning[/yellow]: {w}")
    console.print()
    for c in answer.citations:
        where = [c.filename]
        if c.page is not None:
            where.append(f"p. {c.page}")
        if c.section:
            where.append(f"§ {c.section}")
        console.print(f"[{c.index}] {', '.join(where)}  (score {c.score:.3f})", highlight=False)
    t = answer.timings_ms
    if answer.agent:
        a = answer.agent
        scores = ", ".join(f"{k} {a.scores[k]}" for k in
                           ("groundedness", "relevance", "completeness"))
        err_console.print(f"[dim]agent: {a.analysis} plan, {len(a.steps)} steps; {scores}; "
                          f"audit: GET /api/queries/{a.query_id}/audit[/dim]")
    err_console.print(
        f"[dim]{answer.mode}; embed {t.embed:.1f} ms, retrieve {t.retrieve:.1f} ms, "
        f"generate {t.generate:.1f} ms, total {t.total:.1f} ms; "
        f"conversation {answer.conversation_id}[/dim]"
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=50)] = None,
    conversation: Annotated[str | None, typer.Option(help="Continue a conversation.")] = None,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
    tenant: TenantOpt = DEFAULT_TENANT,
    agent: Annotated[bool, typer.Option(
        "--agent", help="Agent mode: plan the question into tool steps (METIS_AGENT__*).")] = False,
) -> None:
    """Ask a question; prints the answer and numbered citations."""
    settings = _settings(data_dir)
    query = ChatQuery(message=question, collection=collection, top_k=top_k,
                      conversation_id=conversation, mode="agent" if agent else "fast")

    async def main() -> ChatAnswer:
        async with open_services(settings, role="client") as services:
            who = _operator(services, tenant)
            if agent and services.agent is not None:
                return await services.agent.run(query, None, who)
            return await services.chat.answer(query, None, who)

    answer = _run(main())
    if as_json:
        console.print_json(answer.model_dump_json())
    else:
        _print_answer(answer)


async def _with_services(settings: Settings, fn: Any) -> Any:
    async with open_services(settings, role="client") as services:
        return await fn(services)


@docs_app.command("list")
def docs_list(
    collection: CollectionOpt = None,
    tag: Annotated[str | None, typer.Option()] = None,
    folder: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
    tenant: TenantOpt = DEFAULT_TENANT,
) -> None:
    """List documents, newest first."""
    from .api.documents import list_documents

    settings = _settings(data_dir)

    async def fn(services: Services) -> Any:
        # By keyword: the route grows filters, and positions would shift under them.
        return await list_documents(services, _operator(services, tenant), collection=collection,
                                    tag=tag, folder=folder, status=None, doc_type=None,
                                    language=None, topic=None, limit=limit, offset=offset,
                                    q=None, type=None)

    page = _run(_with_services(settings, fn))
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table("id", "collection", "folder", "filename", "chunks", "status", "tags")
    for d in page.items:
        table.add_row(str(d.id), d.collection, d.folder, d.filename, str(d.chunk_count),
                      d.status, ",".join(d.tags))
    console.print(table)
    console.print(f"{len(page.items)} of {page.total}")


@docs_app.command("show")
def docs_show(
    document_id: str,
    chunks: Annotated[bool, typer.Option(help="Include the chunks.")] = False,
    data_dir: DataDir = None,
    tenant: TenantOpt = DEFAULT_TENANT,
) -> None:
    """Show one document (as JSON)."""
    from .api.documents import get_document

    settings = _settings(data_dir)

    async def fn(services: Services) -> Any:
        return await get_document(document_id, services, _operator(services, tenant), chunks)

    console.print_json(_run(_with_services(settings, fn)).model_dump_json())


@docs_app.command("delete")
def docs_delete(document_id: str, data_dir: DataDir = None,
                tenant: TenantOpt = DEFAULT_TENANT) -> None:
    """Delete a document and its chunks from every index."""

    async def fn(services: Services) -> None:
        await services.ingestor.delete(check_tenant(tenant), document_id)

    _run(_with_services(_settings(data_dir), fn))
    console.print(f"deleted document {document_id}")


ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help="A running Metis (default: METIS_HOST:METIS_PORT, if up)."),
]


def _server(settings: Settings, url: str | None) -> str | None:
    """The URL of a running server for this data dir, or None to work in-process."""
    import httpx

    url = url or f"http://{settings.host}:{settings.port}"
    try:
        httpx.get(url + "/api/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    return url


@cache_app.command("stats")
def cache_stats(data_dir: DataDir = None, server: ServerOpt = None) -> None:
    """Per-level hits, misses, hit ratio, entries, bytes, evictions, errors, latency, savings.

    Counters live in the server process: asks the running server; without one, shows what
    the persistent tier holds."""
    settings = _settings(data_dir)
    url = _server(settings, server)
    if url is not None:
        import httpx

        stats = httpx.get(url + "/api/cache/stats", timeout=10).json()
    else:
        async def fn(services: Services) -> Any:
            if services.caches is None:
                raise MetisError("The cache is disabled.", code="cache_disabled")
            return await services.caches.stats()

        stats = _run(_with_services(settings, fn))
    table = Table("level", "hits", "misses", "hit ratio", "entries", "bytes", "mean hit ms",
                  "mean miss ms", "errors", "saved ms")
    for name, lv in stats["levels"].items():
        table.add_row(name, str(lv["hits"]), str(lv["misses"]), f"{lv['hit_ratio']:.1%}",
                      str(lv.get("entries", "-")), str(lv.get("bytes", "-")),
                      f"{lv.get('mean_hit_ms', 0):.2f}", f"{lv.get('mean_miss_ms', 0):.2f}",
                      str(lv.get("errors", 0)), f"{lv['saved_ms']:.0f}")
    console.print(table)
    tiers = Table("tier", "entries", "bytes", "evictions", "errors", "healthy")
    for t in stats["tiers"]:
        tiers.add_row(t["backend"], str(t["entries"]), str(t["bytes"]), str(t["evictions"]),
                      str(t["errors"]), str(t["healthy"]))
    console.print(tiers)
    console.print(f"LLM calls saved: {stats['llm_calls_saved']}, tokens saved: "
                  f"{stats['tokens_saved']}, estimated cost saved: "
                  f"${stats['estimated_cost_saved']:.4f}"
                  + ("" if url else "  (no server running: counters of this process only)"))


@cache_app.command("clear")
def cache_clear(
    namespace: Annotated[str | None, typer.Option()] = None,
    collection: CollectionOpt = None,
    level: Annotated[str | None, typer.Option(help="exact, semantic, retrieval, llm, "
                                                   "embedding or document")] = None,
    data_dir: DataDir = None,
    server: ServerOpt = None,
    tenant: TenantOpt = DEFAULT_TENANT,
) -> None:
    """Invalidate a collection's answers, a namespace, a level, or everything (a server with
    API keys needs an admin key in METIS_API_KEY)."""
    settings = _settings(data_dir)
    params = {k: v for k, v in {"namespace": namespace, "collection": collection,
                                "level": level}.items() if v}
    url = _server(settings, server)
    if url is not None:
        import httpx

        key = os.environ.get("METIS_API_KEY")
        r = httpx.delete(url + "/api/cache", params=params, timeout=30,
                         headers={"X-API-Key": key} if key else None)
        if r.status_code >= 400:
            err_console.print(f"[red]error[/red] ({r.json().get('code')}): {r.json().get('message')}")
            raise typer.Exit(2)
    else:
        async def fn(services: Services) -> None:
            if services.caches is None:
                raise MetisError("The cache is disabled.", code="cache_disabled")
            if collection:
                from .store import repo

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


@app.command()
def bench(
    names: Annotated[list[str] | None, typer.Argument(
        help="Benchmarks to run (default: batching, ratelimit, load, mixed).")] = None,
    quick: Annotated[bool, typer.Option(help="Short runs: a smoke test, not figures.")] = False,
    runs: Annotated[int | None, typer.Option(help="Runs per benchmark (median).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Report folder (default benchmarks/results/<timestamp>).")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the benchmarks.")] = False,
) -> None:
    """Run the benchmark suite and write a Markdown report with plots."""
    from .benchsuite import SUITE, run_suite

    if list_only:
        for name, b in SUITE.items():
            console.print(f"{name:15} {b.about}{'' if b.default else '  (only when named)'}")
        return
    try:
        report = run_suite(names or [], quick=quick, runs=runs, out=out, echo=console.print)
    except MetisError as exc:
        err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(2) from None
    console.print(f"report: {report}")

