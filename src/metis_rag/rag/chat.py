"""Answering a question: conversation history, the cache levels, retrieval, generation.

Order of work for one question (each step skipped when an earlier one answers):
exact cache → semantic cache → retrieval (retrieval cache inside) → generation (LLM cache
inside the cached LLM). Answers are cached under the collection's version, so any change to
the collection makes every earlier answer unreachable; answers filtered by the documents'
analysis (type, language, topic) also under its analysis version, which storing an analysis
bumps without touching the others.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..cache.levels import Caches
from ..config import CacheSettings, LLMSettings, RetrievalSettings
from ..embed.base import Embedder
from ..errors import InvalidInput, ProviderError
from ..llm.base import LLM, ChatMessage, Completion
from ..schemas import CacheInfo, ChatAnswer, ChatQuery, Citation
from ..store import repo
from ..store.lookup import CollectionLookup, CollectionRef
from ..tenancy.principal import SINGLE_TENANT, Principal
from .answer import build_messages, extractive_answer
from .conversations import ConversationLog
from .retriever import Retriever
from .turn import AnswerShapes, Turn, citations_of, elapsed_ms

_CITED_SENTENCE_END = re.compile(r"(?<=\])\s+")
_CITATIONS_SEEN = 1024  # as many as the exact level's memo holds


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        retriever: Retriever,
        llm: LLM | None,
        caches: Caches | None,
        lookup: CollectionLookup,
        conversations: ConversationLog,
        *,
        retrieval: RetrievalSettings,
        generation: LLMSettings,
        cache: CacheSettings,
        default_collection: str = "default",
        durable_conversations: bool = False,
        uncached_embedder: Embedder | None = None,
        uncached_llm: LLM | None = None,
    ) -> None:
        self._retrieval_settings = retrieval
        self._generation = generation  # temperature and max_tokens of every completion
        self._cache_settings = cache
        self._default_collection = default_collection
        self._durable_conversations = durable_conversations
        self._sessions = sessions
        self._lookup = lookup
        self._conversations = conversations
        self._embedder = embedder
        # `cache: false` bypasses every level, the embedding and LLM caches included (but not
        # the batching and rate limiting those caches wrap): `Services` hands both layers in.
        self._uncached_embedder = uncached_embedder or embedder
        self._retriever = retriever
        self._llm = llm
        self._uncached_llm = uncached_llm or llm
        self._caches = caches
        # id(cache entry) -> (the entry, its citations validated): see `_entry_citations`.
        self._citations_seen: dict[int, tuple[dict[str, Any], list[Citation]]] = {}
        self._shapes = AnswerShapes(retrieval, generation, llm.name if llm else "extractive")

    # -- the steps -------------------------------------------------------------------------

    async def _resolve(self, query: ChatQuery, namespace: str | None, who: Principal) -> Turn:
        started = time.perf_counter()
        if not query.use_rag and self._llm is None:
            raise InvalidInput(
                "use_rag=false needs an LLM: set METIS_LLM__PROVIDER (extractive answers "
                "come from the documents).",
                code="llm_required",
            )
        names = query.collections or [query.collection or self._default_collection]
        tenant = who.tenant
        if len(names) == 1:  # the usual case: no task for gather to schedule
            coll, others = await self._collection(tenant, names[0], query), []
        else:
            coll, *others = await asyncio.gather(
                *(self._collection(tenant, n, query) for n in names))
        history: list[ChatMessage] = []
        conversation_id = query.conversation_id
        if conversation_id:
            if await self._conversations.collection_of(conversation_id, tenant) != coll.id:
                raise InvalidInput(
                    f"Conversation {conversation_id} belongs to another collection.",
                    code="conversation_collection_mismatch",
                )
            history = await self._conversations.history(
                conversation_id, self._retrieval_settings.history_turns
            )
        return Turn(
            query=query,
            tenant=tenant,
            # Inside the tenant whatever the request names: a namespace narrows, never leaves.
            namespace=who.namespace(query.namespace or namespace or self._cache_settings.namespace),
            collection_id=coll.id,
            version=coll.version,
            analysis_version=coll.analysis_version,
            conversation_id=conversation_id or self._conversations.new_id(),
            history=history,
            shape=self._shapes.of(query, history),
            started=started,
            new_conversation=not query.conversation_id,
            others=others,
            names=list(names),
        )

    async def _collection(self, tenant: str, name: str, query: ChatQuery) -> CollectionRef:
        if query.collection or query.collections:
            return await self._lookup.get(tenant, name)
        # The default collection always exists, even before anything is ingested.
        return await self._lookup.get_or_create(tenant, name)

    async def _embed(self, turn: Turn) -> np.ndarray:
        if turn.vector is None:
            t = time.perf_counter()
            embedder = self._embedder if turn.use_cache else self._uncached_embedder
            turn.vector = (await embedder.embed([turn.retrieval_text]))[0]
            turn.timings.embed = elapsed_ms(t)
        return turn.vector

    async def _cached_answer(self, turn: Turn) -> tuple[dict[str, Any], CacheInfo] | None:
        caches = self._caches
        if caches is None or not turn.use_cache:
            return None
        entry = await caches.exact.get(turn.exact_key)
        if entry is not None:
            return entry, CacheInfo(level="exact")
        if not caches.semantic.serving:
            # Every lookup would miss: spare its round trip, and the embedding when retrieval
            # does not need it either (`_retrieve` embeds on demand).
            caches.semantic.skip()
            return None
        # The mirror's catch-up read needs no vector: it travels while the model embeds.
        vector, _ = await asyncio.gather(self._embed(turn), caches.semantic.catch_up(turn.partition))
        # No retrieval here: "the same top source" proves nothing (different questions about
        # one passage share it); the equivalence decision compares the questions themselves.
        found = await caches.semantic.match(turn.partition, vector, turn.query.message,
                                            caught_up=True)
        if found is None:
            return None
        entry = await caches.exact.get(found.candidate.key)
        if entry is None:
            caches.semantic.reject("answer_gone", was_hit=True)
            return None
        verdict = found.verdict
        return entry, CacheInfo(level="semantic", similarity=round(found.candidate.similarity, 4),
                                original_question=found.candidate.question,
                                score=round(verdict.score, 4),
                                threshold=round(caches.semantic.equivalence.threshold, 4),
                                checks=list(verdict.checks),
                                probability=round(verdict.probability, 4))

    async def _retrieve(self, turn: Turn) -> None:
        if not turn.query.use_rag or turn.retrieved:
            return
        turn.retrieved = True
        vector = await self._embed(turn)
        t = time.perf_counter()
        q = turn.query
        cached = turn.use_cache and self._caches is not None
        # Each collection is searched (and cached) on its own, concurrently, then fused.
        scopes = turn.scopes()
        turn.sources, turn.retrieval_saved_ms = await self._retriever.retrieve_many(
            [(cid, scope if cached else None) for cid, scope in scopes], turn.retrieval_text,
            vector, top_k=q.top_k or self._retrieval_settings.top_k, tags=q.tags,
            folder=q.folder, hybrid=q.hybrid, group_by=q.group_by, warnings=turn.warnings,
            analysis=repo.AnalysisFilter(doc_type=q.doc_type, language=q.language, topic=q.topic),
        )
        turn.timings.retrieve = elapsed_ms(t)

    def _messages(self, turn: Turn) -> list[ChatMessage]:
        return build_messages(turn.query.message, turn.sources, turn.history, turn.query.use_rag)

    async def _generate(self, turn: Turn) -> tuple[str, str, Completion | None]:
        llm = self._llm if turn.use_cache else self._uncached_llm
        if llm is not None:
            s = self._generation
            try:
                done = await llm.complete(
                    self._messages(turn), temperature=s.temperature, max_tokens=s.max_tokens
                )
                return done.text, "llm", done
            except ProviderError as exc:
                if not turn.query.use_rag:
                    raise
                # The documents still answer: degrade to extractive rather than fail.
                turn.warnings.append(f"{exc.code}: {exc.message}; answered extractively")
        return extractive_answer(turn.query.message, turn.sources), "extractive", None

    async def _finish(
        self, turn: Turn, text: str, mode: str, done: Completion | None, citations: list[Citation],
        cache: CacheInfo, cited: list[dict[str, Any]] | None = None, *, from_entry: bool = False,
    ) -> ChatAnswer:
        """`cited`: the citations as plain dicts when the caller has them (a cache entry).

        `from_entry`: the answer is a cache entry, keyed on the version read when the request
        arrived; only answers made now, by retrieving, need the version read again (a cached
        one's answer was checked so before it was stored, and a change after arrival is a
        later event).
        """
        if turn.others or (not from_entry
                           and await self._lookup.version(turn.collection_id) != turn.version):
            # The collection changed while we answered: drop citations of chunks now gone.
            citations = await self._still_present(citations)
            cited = None
        log = self._conversations
        if turn.new_conversation:
            log.new_conversation(turn.conversation_id, turn.collection_id, turn.query.message,
                                 turn.tenant)
        await log.append_turn(turn.conversation_id, turn.query.message, text,
                              cited if cited is not None else [c.model_dump() for c in citations])
        if self._durable_conversations:
            await log.committed()
        served = str(done.extra.get("provider") or "") if done is not None else ""
        skipped = done.extra.get("fallbacks") if done is not None else None
        if isinstance(skipped, list) and skipped:
            turn.warnings.append(f"provider_fallback: {'; '.join(skipped)}; served by {served}")
        turn.timings.total = elapsed_ms(turn.started)
        usage = ({"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens}
                 if done is not None else {})
        # Only a model call costs: an answer or completion served from a cache level spent none.
        called = mode == "llm" and cache.level in (None, "retrieval")
        cost = (sum(usage.values()) / 1000 * self._cache_settings.price_per_1k_tokens
                if called else 0.0)
        return ChatAnswer(
            answer=text, citations=citations, conversation_id=turn.conversation_id,
            mode=mode,
            model=(served or self._llm.name) if mode == "llm" and self._llm else None,
            timings_ms=turn.timings, usage=usage, cost=round(cost, 8), warnings=turn.warnings,
            cache=cache,
        )

    async def _still_present(self, citations: list[Citation]) -> list[Citation]:
        async with self._sessions() as session:
            rows = await repo.chunks_by_ids(session, [c.chunk_id for c in citations])
        return [c for c in citations if c.chunk_id in rows]

    async def _remember(self, turn: Turn, answer: ChatAnswer) -> None:
        caches = self._caches
        if caches is None or not turn.use_cache or answer.warnings:
            return  # never cache a degraded answer
        entry = {
            "answer": answer.answer, "mode": answer.mode, "model": answer.model,
            "usage": answer.usage, "total_ms": answer.timings_ms.total,
            "citations": [c.model_dump() for c in answer.citations],
        }
        await caches.exact.set(turn.exact_key, entry)
        if turn.vector is not None:
            await caches.semantic.add(turn.partition, turn.vector, turn.exact_key,
                                      turn.query.message)

    def _cache_level(self, turn: Turn, done: Completion | None) -> CacheInfo:
        caches = self._caches
        if done is not None and done.extra.get("cache_hit"):
            saved_ms = done.extra.get("saved_ms")
            saved = float(saved_ms) if isinstance(saved_ms, int | float) else 0.0
            tokens = done.prompt_tokens + done.completion_tokens
            if caches:
                caches.savings.add("llm", saved, tokens, llm_call=True)
            return CacheInfo(level="llm", saved_ms=round(saved, 1))
        if turn.retrieval_saved_ms is not None:
            if caches:
                caches.savings.add("retrieval", turn.retrieval_saved_ms, 0, llm_call=False)
            return CacheInfo(level="retrieval", saved_ms=round(turn.retrieval_saved_ms, 1))
        return CacheInfo()

    def _from_cache(self, turn: Turn, entry: dict[str, Any], info: CacheInfo) -> tuple[
        str, str, Completion | None, list[Citation]
    ]:
        usage = entry.get("usage") or {}
        done = None
        if entry["mode"] == "llm":
            done = Completion(entry["answer"], entry.get("model") or "",
                              usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                              extra={"provider": entry.get("model")})
        saved = max(0.0, float(entry.get("total_ms", 0.0)) - elapsed_ms(turn.started))
        info.saved_ms = round(saved, 1)
        if self._caches:
            self._caches.savings.add(info.level or "exact", saved, sum(usage.values()),
                                     llm_call=entry["mode"] == "llm")
        return entry["answer"], entry["mode"], done, self._entry_citations(entry)

    def _entry_citations(self, entry: dict[str, Any]) -> list[Citation]:
        """The entry's citations as models, validated once per entry: the exact level hands
        every hit on unchanged bytes the same entry object (its memo), never mutated."""
        seen = self._citations_seen.get(id(entry))
        if seen is not None and seen[0] is entry:  # the entry is held: its id is not reused
            return list(seen[1])
        # pydantic-core's validator is 3-4x cheaper than `model_construct` (Python code) here,
        # and it still checks entries that an older Metis may have written.
        citations = [Citation.model_validate(c) for c in entry["citations"]]
        if len(self._citations_seen) >= _CITATIONS_SEEN:
            del self._citations_seen[next(iter(self._citations_seen))]
        self._citations_seen[id(entry)] = (entry, citations)
        return list(citations)

    # -- the two entry points ---------------------------------------------------------------

    async def answer(self, query: ChatQuery, namespace: str | None = None,
                     who: Principal = SINGLE_TENANT) -> ChatAnswer:
        answer: ChatAnswer | None = None
        async for kind, value in self._events(query, namespace, who, streaming=False):
            if kind == "done":
                answer = value
        assert answer is not None  # _events always ends with "done"
        return answer

    def stream(
        self, query: ChatQuery, namespace: str | None = None, who: Principal = SINGLE_TENANT
    ) -> AsyncIterator[tuple[str, Any]]:
        """Events: ("token", text) ..., then ("citations", [...]), then ("done", ChatAnswer)."""
        return self._events(query, namespace, who, streaming=True)

    async def _events(
        self, query: ChatQuery, namespace: str | None, who: Principal, *, streaming: bool
    ) -> AsyncIterator[tuple[str, Any]]:
        """The one way a question is answered; without `streaming` no token or citations
        events are made and the LLM is asked for the whole completion at once."""
        turn = await self._resolve(query, namespace, who)
        cached = await self._cached_answer(turn)
        if cached is not None:
            text, mode, done, citations = self._from_cache(turn, *cached)
            if streaming:
                for piece in _pieces(text):
                    yield "token", piece
            answer = await self._finish(turn, text, mode, done, citations, cached[1],
                                        cached[0]["citations"], from_entry=True)
        else:
            await self._retrieve(turn)
            t = time.perf_counter()
            if not streaming:
                text, mode, done = await self._generate(turn)
            else:
                parts: list[str] = []
                mode, done = "extractive", None
                llm = self._llm if turn.use_cache else self._uncached_llm
                if llm is not None:
                    s = self._generation
                    try:
                        stream = llm.stream(self._messages(turn), temperature=s.temperature,
                                            max_tokens=s.max_tokens)
                        async for delta in stream:
                            parts.append(delta)
                            yield "token", delta
                        mode, done = "llm", stream.completion
                    except ProviderError as exc:
                        if parts or not query.use_rag:
                            raise
                        turn.warnings.append(f"{exc.code}: {exc.message}; answered extractively")
                if mode == "extractive":
                    for piece in _pieces(extractive_answer(query.message, turn.sources)):
                        parts.append(piece)
                        yield "token", piece
                text = "".join(parts)
            turn.timings.generate = elapsed_ms(t)
            cited = citations_of(turn.sources, turn.collection_names)
            answer = await self._finish(turn, text, mode, done, cited,
                                        self._cache_level(turn, done))
            await self._remember(turn, answer)
        if streaming:  # answer() reads only "done": dumping these was ~5 % of a cached hit
            yield "citations", [c.model_dump() for c in answer.citations]
        yield "done", answer


def _pieces(text: str) -> list[str]:
    parts = _CITED_SENTENCE_END.split(text)
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]
