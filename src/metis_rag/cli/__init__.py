"""The `metis` command: serve, ingest, ask and bench here; one module per command group
(docs, cache, tasks; keys and audit in tenancy.cli)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import MetisError
from ..ingest.parsers import SUPPORTED
from ..ingest.pipeline import IngestResult
from ..schemas import ChatAnswer, ChatQuery
from ..services import open_services
from ..tenancy.cli import audit, keys_app
from ..tenancy.principal import DEFAULT_TENANT, check_tenant
from .cache import cache_app
from .common import (
    CollectionOpt,
    DataDir,
    JsonOpt,
    TenantOpt,
    _operator,
    _run,
    _settings,
    console,
    err_console,
)
from .docs import docs_app
from .tasks import ingest_as_tasks, tasks_app, worker

app = typer.Typer(help="Metis: a fast, frugal RAG server.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(docs_app, name="docs")
app.add_typer(cache_app, name="cache")
app.add_typer(tasks_app, name="tasks")
app.command("worker")(worker)
app.add_typer(keys_app, name="keys")
app.command("audit")(audit)


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Overrides METIS_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides METIS_PORT.")] = None,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from ..app import create_app

    settings = _settings(data_dir)
    update = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=update)
    # log_config=None: uvicorn's loggers go through Metis's structured logging (create_app sets
    # it up); access_log=False: Metis writes its own access line, with the request id.
    http: Any = "auto"
    with contextlib.suppress(ImportError):  # without httptools, uvicorn's own h11 protocol
        from ..httpserver import CoalescingHttpToolsProtocol as http
    uvicorn.run(create_app(settings, freeze_gc=True), host=settings.host, port=settings.port,
                log_level=settings.log_level, loop="auto", http=http,
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
    from ..benchsuite import SUITE, run_suite

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

