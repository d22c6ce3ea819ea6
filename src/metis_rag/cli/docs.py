"""`metis docs`: list, show and delete documents."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..services import Services
from ..tenancy.principal import DEFAULT_TENANT, check_tenant
from .common import (
    CollectionOpt,
    DataDir,
    JsonOpt,
    TenantOpt,
    _operator,
    _run,
    _settings,
    _with_services,
    console,
)

docs_app = typer.Typer(help="List, show and delete documents.", no_args_is_help=True)


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
    from ..api.documents import list_documents

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
    from ..api.documents import get_document

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
