"""`list_documents` and `summarize_document`: the caller's documents, never another tenant's."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import AnalysisSettings
from ..errors import ProviderError
from ..llm.base import LLM, ChatMessage
from ..store import repo
from ..store.lookup import CollectionLookup
from .analysis import detect_language, extractive_summary, keywords
from .analysis_step import document_text
from .tools import ToolContext, ToolResult, ToolSpec

log = logging.getLogger("metis.agent.tools")

MAX_LISTED = 50
LLM_INPUT_CHARS = 12_000


class ListDocuments:
    spec = ToolSpec(
        name="list_documents",
        description="List the documents of the current collection(s) with their type, language, "
        "topics and summary; filter by type, language, topic, tag or folder.",
        parameters={
            "type": "object",
            "properties": {
                "doc_type": {"type": "string", "maxLength": 40,
                             "description": "invoice, contract, policy, manual, report, paper, "
                             "email, faq, code, data or article"},
                "language": {"type": "string", "maxLength": 16},
                "topic": {"type": "string", "maxLength": 100},
                "tag": {"type": "string", "maxLength": 100},
                "folder": {"type": "string", "maxLength": 500},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LISTED},
            },
            "additionalProperties": False,
        },
        cache_ttl_s=600.0,
        reads_documents=True,
        reads_analysis=True,  # it shows each document's type, language, topics and summary
    )

    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 lookup: CollectionLookup) -> None:
        self._sessions = sessions
        self._lookup = lookup

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        names: dict[int, str] = {}  # collection id -> name, of those that exist
        for name in context.collections:
            if (ref := await self._lookup.find(context.tenant, name)) is not None:
                names[ref.id] = name
        if not names:
            where = ", ".join(repr(c) for c in context.collections)
            return ToolResult(f"The collection {where} has no documents.",
                              data={"documents": [], "total": 0})
        limit = int(arguments.get("limit") or 20)
        rows: list[dict[str, Any]] = []
        total = 0
        async with self._sessions() as session:
            for collection_id, name in names.items():  # each collection's newest first
                docs, count = await repo.list_documents(
                    session, context.tenant, collection_id=collection_id,
                    tag=arguments.get("tag"), folder=arguments.get("folder", context.folder),
                    status="ready", limit=max(0, limit - len(rows)),
                    analysis=repo.AnalysisFilter(doc_type=arguments.get("doc_type"),
                                                 language=arguments.get("language"),
                                                 topic=arguments.get("topic")))
                total += count
                rows += [{"id": d.public_id, "filename": d.filename, "folder": d.folder,
                          "doc_type": d.doc_type, "language": d.language,
                          "topics": list(d.topics or []), "summary": (d.summary or "")[:300],
                          "analysis_status": d.analysis_status,
                          **({"collection": name} if context.also else {})} for d in docs]
        if not rows:
            return ToolResult("No document matches.", data={"documents": [], "total": 0})
        lines = [f"- {r['filename']} (id {r['id']}, {r['doc_type'] or _unanalysed(r)}, "
                 f"{r['language'] or '?'}"
                 + (f", in {r['collection']}" if "collection" in r else "")
                 + f"): {', '.join(r['topics'][:5])}" for r in rows]
        more = f"\n({total - len(rows)} more)" if total > len(rows) else ""
        return ToolResult("\n".join(lines) + more, data={"documents": rows, "total": total})


def _unanalysed(row: Mapping[str, Any]) -> str:
    status = row["analysis_status"]
    return f"analysis {status}" if status in ("pending", "failed") else "unanalysed"


class SummarizeDocument:
    spec = ToolSpec(
        name="summarize_document",
        description="Summarise one document of the caller's, by its id (from list_documents or "
        "a citation).",
        parameters={
            "type": "object",
            "properties": {
                "document_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "max_sentences": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["document_id"],
            "additionalProperties": False,
        },
        cache_ttl_s=3600.0,
        reads_documents=True,
    )

    def __init__(self, sessions: async_sessionmaker[AsyncSession], llm: LLM | None,
                 settings: AnalysisSettings | None = None) -> None:
        self._sessions = sessions
        self._llm = llm
        self._settings = settings or AnalysisSettings()

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        sentences = int(arguments.get("max_sentences") or self._settings.summary_sentences)
        async with self._sessions() as session:
            # Another tenant's document is "not found", exactly like a missing one.
            doc = await repo.get_document(session, context.tenant, str(arguments["document_id"]))
            text = await document_text(session, doc.id)
            filename, public_id = doc.filename, doc.public_id
        summary, method = None, "extractive"
        if self._llm is not None and text.strip():
            summary = await self._by_llm(filename, text, sentences)
            method = "llm" if summary else method
        if summary is None:
            language = detect_language(text)
            weights: dict[str, float] = {}
            for term, score in keywords(text, language, 12):
                for word in term.split():
                    weights[word] = max(weights.get(word, 0.0), score)
            summary = extractive_summary(text, weights, sentences) if text.strip() else ""
        return ToolResult(f"{filename}: {summary}" if summary else f"{filename} has no text.",
                          data={"document_id": public_id, "summary": summary,
                                "method": method})

    async def _by_llm(self, filename: str, text: str, sentences: int) -> str | None:
        assert self._llm is not None
        messages = [
            ChatMessage("system", f"Summarise the document in at most {sentences} sentences. "
                        "Use only what the document says."),
            ChatMessage("user", f"File: {filename}\n\n{text[:LLM_INPUT_CHARS]}"),
        ]
        try:
            done = await self._llm.complete(messages, temperature=0.0, max_tokens=300)
        except ProviderError as exc:
            log.warning("summarize_document: %s failed (%s), extractive instead",
                        self._llm.name, exc.code)
            return None
        return done.text.strip() or None
