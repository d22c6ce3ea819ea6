"""Answering a question: conversation history, retrieval, generation, and what gets saved."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import Settings
from ..embed.base import Embedder
from ..errors import InvalidInput, ProviderError
from ..llm.base import LLM, ChatMessage
from ..schemas import ChatAnswer, ChatQuery, Citation, Timings
from ..store import repo
from ..store.models import Message
from .answer import build_messages, extractive_answer
from .retriever import Retrieved, Retriever


_CITED_SENTENCE_END = re.compile(r"(?<=\])\s+")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def citations_of(sources: list[Retrieved]) -> list[Citation]:
    return [
        Citation(
            index=i,
            document_id=r.chunk.document_id,
            filename=r.chunk.filename,
            folder=r.chunk.folder,
            page=r.chunk.page,
            section=r.chunk.section,
            chunk_id=r.chunk.id,
            position=r.chunk.position,
            score=round(r.score, 4),
            snippet=r.chunk.text[:300],
        )
        for i, r in enumerate(sources, start=1)
    ]


@dataclass(slots=True)
class _Turn:
    """What is known about a question once retrieval is done, before generation."""

    query: ChatQuery
    collection_id: int
    conversation_id: str
    history: list[ChatMessage]
    sources: list[Retrieved]
    timings: Timings
    started: float
    warnings: list[str] = field(default_factory=list)


class ChatService:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        retriever: Retriever,
        llm: LLM | None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._embedder = embedder
        self._retriever = retriever
        self._llm = llm

    async def _prepare(self, query: ChatQuery) -> _Turn:
        started = time.perf_counter()
        timings = Timings()
        if not query.use_rag and self._llm is None:
            raise InvalidInput(
                "use_rag=false needs an LLM: set METIS_LLM__PROVIDER (extractive answers "
                "come from the documents).",
                code="llm_required",
            )
        name = query.collection or self._settings.default_collection
        history: list[ChatMessage] = []
        async with self._sessions() as session, session.begin():
            coll = await repo.get_collection(session, name)
            if query.conversation_id:
                conv = await repo.get_conversation(session, query.conversation_id)
                if conv.collection_id != coll.id:
                    raise InvalidInput(
                        f"Conversation {conv.id} belongs to another collection.",
                        code="conversation_collection_mismatch",
                    )
                past = await repo.recent_messages(
                    session, conv.id, self._settings.retrieval.history_turns
                )
                history = [ChatMessage(m.role, m.content) for m in past]  # type: ignore[arg-type]
            else:
                conv = await repo.create_conversation(session, coll.id, query.message)
        sources: list[Retrieved] = []
        if query.use_rag:
            # A follow-up ("and the second one?") is retrieved together with the last question.
            last_user = next((m.content for m in reversed(history) if m.role == "user"), "")
            retrieval_text = f"{last_user}\n{query.message}" if last_user else query.message
            t = time.perf_counter()
            vector = (await self._embedder.embed([retrieval_text]))[0]
            timings.embed = _ms(t)
            t = time.perf_counter()
            sources = await self._retriever.retrieve(
                coll.id,
                retrieval_text,
                vector,
                top_k=query.top_k or self._settings.retrieval.top_k,
                tags=query.tags,
                folder=query.folder,
                hybrid=query.hybrid,
            )
            timings.retrieve = _ms(t)
        return _Turn(query, coll.id, conv.id, history, sources, timings, started)

    async def answer(self, query: ChatQuery) -> ChatAnswer:
        turn = await self._prepare(query)
        t = time.perf_counter()
        text, mode, model, usage = await self._generate(turn)
        turn.timings.generate = _ms(t)
        return await self._finish(turn, text, mode, model, usage)

    async def _generate(self, turn: _Turn) -> tuple[str, str, str | None, dict[str, int]]:
        if self._llm is not None:
            messages = build_messages(
                turn.query.message, turn.sources, turn.history, turn.query.use_rag
            )
            s = self._settings.llm
            try:
                done = await self._llm.complete(
                    messages, temperature=s.temperature, max_tokens=s.max_tokens
                )
                usage = {"prompt_tokens": done.prompt_tokens,
                         "completion_tokens": done.completion_tokens}
                return done.text, "llm", self._llm.name, usage
            except ProviderError as exc:
                if not turn.query.use_rag:
                    raise
                # The documents still answer: degrade to extractive rather than fail.
                turn.warnings.append(f"{exc.code}: {exc.message}; answered extractively")
        return extractive_answer(turn.query.message, turn.sources), "extractive", None, {}

    async def _finish(
        self, turn: _Turn, text: str, mode: str, model: str | None, usage: dict[str, int]
    ) -> ChatAnswer:
        citations = citations_of(turn.sources)
        async with self._sessions() as session, session.begin():
            session.add(Message(conversation_id=turn.conversation_id, role="user",
                                content=turn.query.message, citations=[]))
            session.add(Message(conversation_id=turn.conversation_id, role="assistant",
                                content=text,
                                citations=[c.model_dump() for c in citations]))
        turn.timings.total = _ms(turn.started)
        return ChatAnswer(
            answer=text,
            citations=citations,
            conversation_id=turn.conversation_id,
            mode=mode,  # type: ignore[arg-type]
            model=model,
            timings_ms=turn.timings,
            usage=usage,
            warnings=turn.warnings,
        )

    async def stream(self, query: ChatQuery) -> AsyncIterator[tuple[str, Any]]:
        """Events: ("token", text) ..., then ("citations", [...]), then ("done", ChatAnswer)."""
        turn = await self._prepare(query)
        t = time.perf_counter()
        parts: list[str] = []
        mode, model = "extractive", None
        usage: dict[str, int] = {}
        if self._llm is not None:
            messages = build_messages(query.message, turn.sources, turn.history, query.use_rag)
            s = self._settings.llm
            try:
                stream = self._llm.stream(
                    messages, temperature=s.temperature, max_tokens=s.max_tokens
                )
                async for delta in stream:
                    parts.append(delta)
                    yield "token", delta
                mode, model = "llm", self._llm.name
                if stream.completion is not None:
                    usage = {"prompt_tokens": stream.completion.prompt_tokens,
                             "completion_tokens": stream.completion.completion_tokens}
            except ProviderError as exc:
                if parts or not query.use_rag:
                    raise
                turn.warnings.append(f"{exc.code}: {exc.message}; answered extractively")
        if mode == "extractive":
            text = extractive_answer(query.message, turn.sources)
            for i, sentence in enumerate(_CITED_SENTENCE_END.split(text)):
                piece = sentence if i == 0 else " " + sentence
                parts.append(piece)
                yield "token", piece
        turn.timings.generate = _ms(t)
        result = await self._finish(turn, "".join(parts), mode, model, usage)
        yield "citations", [c.model_dump() for c in result.citations]
        yield "done", result
