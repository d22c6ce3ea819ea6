"""`rag_search`: Metis's hybrid retrieval over the caller's collection(s), with citations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..embed.base import Embedder
from ..rag.retriever import Retriever
from ..store.lookup import CollectionLookup
from ..store.repo import AnalysisFilter
from .tools import ToolCitation, ToolContext, ToolResult, ToolSpec

MAX_TOP_K = 20
SNIPPET_CHARS = 600


class RagSearch:
    spec = ToolSpec(
        name="rag_search",
        description="Search the documents of the current collection(s); returns the most relevant "
        "passages, numbered, each with its document and page. `topic` / `doc_type` narrow the "
        "search to documents analysed with that topic or type (all documents when none match).",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 2000,
                          "description": "What to look for, in words."},
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 100},
                         "maxItems": 20},
                "folder": {"type": "string", "maxLength": 500},
                "topic": {"type": "string", "maxLength": 100},
                "doc_type": {"type": "string", "maxLength": 40},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        cache_ttl_s=3600.0,
        reads_documents=True,
        reads_analysis=frozenset({"topic", "doc_type"}),  # they pick documents by analysis
    )

    def __init__(self, lookup: CollectionLookup, embedder: Embedder, retriever: Retriever,
                 default_top_k: int = 5) -> None:
        self._lookup = lookup
        self._embedder = embedder
        self._retriever = retriever
        self._default_top_k = default_top_k

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        query = str(arguments["query"])
        names: dict[int, str] = {}  # collection id -> name, of those that exist
        for name in context.collections:
            if (ref := await self._lookup.find(context.tenant, name)) is not None:
                names[ref.id] = name
        where = ", ".join(repr(c) for c in context.collections)
        if not names:
            return ToolResult(f"The collection {where} has no documents.", data={"hits": 0})
        vector = (await self._embedder.embed([query]))[0]
        tags = list(arguments.get("tags") or context.tags)
        top_k = int(arguments.get("top_k") or self._default_top_k)
        folder = arguments.get("folder", context.folder)
        narrow = AnalysisFilter(doc_type=arguments.get("doc_type") or None,
                                topic=arguments.get("topic") or None)
        # The plain chat path's merge of several collections; the tool cache caches the result.
        scopes: list[tuple[int, str | None]] = [(cid, None) for cid in names]
        found, _ = await self._retriever.retrieve_many(
            scopes, query, vector, top_k=top_k, tags=tags, folder=folder,
            analysis=narrow if narrow.active else None)
        # Narrowing picks documents by their analysis; it may cut noise, never the answer.
        narrowed = narrow.active and bool(found)
        if narrow.active and not found:
            found, _ = await self._retriever.retrieve_many(scopes, query, vector, top_k=top_k,
                                                           tags=tags, folder=folder)
        data: dict[str, Any] = {"hits": len(found)}
        if narrow.active:
            data["narrowed"] = narrowed  # False: nothing matched it, all documents searched
        several = len(context.collections) > 1
        citations = [
            ToolCitation(document_id=r.chunk.document_id, title=r.chunk.filename,
                         chunk_id=str(r.chunk.id), text=r.chunk.text[:SNIPPET_CHARS],
                         score=round(r.score, 6), page=r.chunk.page, section=r.chunk.section,
                         collection=names.get(r.chunk.collection_id, context.collection))
            for r in found
        ]
        if not citations:
            return ToolResult(f"Nothing in {where} matches {query[:200]!r}.", data=data)
        lines = [f"[{i}] " + (f"{c.collection}/" if several else "") + c.title
                 + (f" p.{c.page}" if c.page else "") + f": {c.text}"
                 for i, c in enumerate(citations, 1)]
        return ToolResult("\n".join(lines), data=data, citations=citations)
