"""`Services`: every long-lived component of a running Metis, built and closed in one place.

The HTTP app builds it in its lifespan; the CLI builds it for one command. Nothing here runs
at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .agent.analysis import DocumentAnalyzer
from .agent.service import AgentService
from .batching import BatchingEmbedder
from .cache.levels import Caches, open_caches
from .config import Settings
from .embed import build_embedder
from .embed.base import Embedder
from .embed.cached import CachedEmbedder
from .embed.metered import MeteredEmbedder
from .embed.packaged import counts_add_up
from .errors import ServiceUnavailable
from .ingest.chunker import Chunker
from .ingest.pipeline import Ingestor
from .ingest.sandbox import ChunkingConfig, ParseSandbox
from .llm.base import LLM
from .llm.cached import CachedLLM
from .llm.fallback import build_chain
from .llm.metered import MeteredLLM
from .observability.metrics import Metrics
from .observability.tracing import Tracing
from .rag.chat import ChatService
from .rag.conversations import ConversationLog
from .rag.retriever import Retriever
from .ratelimit import SlidingWindow
from .store.db import Transactions, create_engine, migrate, session_factory
from .store.hnsw import HnswVectorStore
from .store.index import DatabaseOnlyVectors, IndexFlusher, reconcile
from .store.lookup import CollectionLookup
from .store.pgvector import PgVectorStore, column_dim
from .store.vectors import VectorStore
from .tasks import Role, build_backend
from .tasks.base import TaskBackend
from .tasks.handlers import build_registry
from .tasks.ingest_embedder import INGEST_SLICE_TEXTS, IngestEmbedder
from .tenancy.audit import AuditLog
from .tenancy.counters import build_counters
from .tenancy.keys import KeyRing, static_keys
from .tenancy.quotas import Quotas

log = logging.getLogger("metis")


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    embedder: Embedder  # behind the embedding cache, when there is one
    vectors: VectorStore
    llm: LLM | None  # behind the LLM cache, when there is one
    ingestor: Ingestor
    retriever: Retriever
    chat: ChatService
    caches: Caches | None
    conversations: ConversationLog
    lookup: CollectionLookup
    metrics: Metrics
    tasks: TaskBackend
    index_flusher: IndexFlusher
    ingest_embedder: IngestEmbedder
    keyring: KeyRing
    audit: AuditLog
    quotas: Quotas
    cache_invalidations: SlidingWindow  # DELETE /api/cache, per client
    # The same embedder and LLM without their caches (batching, metering and rate limits kept):
    # for `cache: false` and for health probes that must reach the model.
    uncached_embedder: Embedder
    uncached_llm: LLM | None
    # The throughput layer, for metrics (`stats` on each): query micro-batching and the (rate
    # limited) LLM chain that `llm` wraps in the LLM cache.
    query_batcher: BatchingEmbedder | None = None
    llm_chain: LLM | None = None
    # Agent mode (POST /api/chat/query with mode agent or auto): plans over the tool registry.
    agent: AgentService | None = None
    # Document analysis at ingestion (METIS_ANALYSIS__ENABLED); None when off.
    analyzer: DocumentAnalyzer | None = None


@asynccontextmanager
async def open_services(
    settings: Settings, metrics: Metrics | None = None, *, role: Role = "server"
) -> AsyncIterator[Services]:
    """`role`: server (runs tasks), client (a CLI command: submits and reads tasks only) or
    worker (a Celery worker: writes chunks to the database, leaves the index to servers)."""
    metrics = metrics or Metrics.for_settings(settings)
    async with AsyncExitStack() as stack:
        tracing = Tracing(settings.observability)  # off unless an OTLP endpoint is configured
        tracing.start()
        stack.callback(tracing.close)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The embedder first: its dimension shapes the pgvector column that migrations create.
        embedder: Embedder = build_embedder(settings.embed, settings.data_dir)
        await embedder.start()
        stack.push_async_callback(embedder.close)
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        await migrate(engine, vector_dim=embedder.dim, hnsw_m=settings.postgres.hnsw_m,
                      hnsw_ef_construction=settings.postgres.hnsw_ef_construction)
        sessions = session_factory(engine)

        embedder = MeteredEmbedder(embedder, metrics)  # under the cache: counts real model calls
        query_batcher: BatchingEmbedder | None = None
        b = settings.batching
        if b.enabled and settings.embed.batches_help:
            # Single-text embeds (queries) from concurrent requests share one model call.
            query_batcher = BatchingEmbedder(embedder, max_batch=b.max_batch,
                                             max_wait_ms=b.max_wait_ms)
            stack.push_async_callback(query_batcher.close)
            embedder = query_batcher
        caches: Caches | None = None
        uncached_embedder = embedder
        if settings.cache.enabled:
            caches = await open_caches(settings.cache, settings.data_dir, embedder.dim, stack,
                                     engine=engine)
            cached = CachedEmbedder(embedder, caches.embedding)
            stack.push_async_callback(cached.flush)  # its writes behind, before the cache closes
            embedder = cached

        vectors = await _vector_store(settings, engine, embedder.dim, role)
        if not isinstance(vectors, DatabaseOnlyVectors):
            await vectors.start()
            stack.push_async_callback(vectors.close)
            fixed = await reconcile(sessions, vectors)
            if fixed["added"] or fixed["removed"]:
                log.warning("vector index reconciled with the database: %s", fixed)

        llm = llm_chain = uncached_llm = build_chain(settings.llm, settings.ratelimit)
        if llm is not None:
            await llm.start()
            stack.push_async_callback(llm.close)
            llm = uncached_llm = MeteredLLM(llm, metrics)
            if caches is not None:
                llm = CachedLLM(llm, caches.llm)

        # Chunking runs in the parser processes when they can count tokens as the embedder does.
        tokenizer = embedder.counting_tokenizer
        chunker = Chunker(
            embedder.count_tokens, settings.chunk.max_tokens, settings.chunk.overlap_tokens,
            max_chunks=settings.chunk.max_chunks_per_document,
            counts_add_up=tokenizer is not None and counts_add_up(tokenizer),
        )
        chunking = None if tokenizer is None else ChunkingConfig(
            tokenizer, settings.chunk.max_tokens, settings.chunk.overlap_tokens,
            settings.chunk.max_chunks_per_document)
        parser = ParseSandbox(settings.parse, chunking)
        stack.push_async_callback(parser.close)
        if settings.parse.prestart and role != "client":
            parser.prestart()
        document_writes = Transactions(engine, "metis-ingest-writer")
        stack.callback(document_writes.close)
        ingestor = Ingestor(
            sessions, embedder, vectors, chunker, max_bytes=settings.max_upload_bytes,
            parser=parser, document_cache=caches.document if caches else None,
            transactions=document_writes,
        )
        retriever = Retriever(sessions, vectors, settings.retrieval,
                              caches.retrieval if caches else None)
        lookup = CollectionLookup(sessions, settings.sqlite_path,
                                  busy_timeout_s=settings.sqlite_busy_timeout_s)
        lookup.start()
        stack.callback(lookup.close)
        c = settings.conversations
        conversations = ConversationLog(sessions, max_delay_ms=c.window_ms,
                                        max_pending=c.max_pending, max_batch=c.max_batch)
        await conversations.start()
        stack.push_async_callback(conversations.close)
        chat = ChatService(sessions, embedder, retriever, llm, caches, lookup, conversations,
                           retrieval=settings.retrieval, generation=settings.llm,
                           cache=settings.cache, default_collection=settings.default_collection,
                           durable_conversations=c.durable, uncached_embedder=uncached_embedder,
                           uncached_llm=uncached_llm)
        index_flusher = IndexFlusher(vectors)
        stack.push_async_callback(index_flusher.close)
        # A slice gives each of the local model's runs work; the second call in flight is the
        # next slice, ready when they free up.
        e = settings.embed
        ingest_embedder = IngestEmbedder(embedder, in_flight=2, slice_texts=max(
            INGEST_SLICE_TEXTS, max(e.batch_size, e.local_batch_size) * max(2, e.cores)))
        stack.push_async_callback(ingest_embedder.close)
        tasks = build_backend(settings, engine, build_registry(settings.tasks), role)
        keyring = KeyRing(static_keys(settings.api_keys), settings.auth.reload_s)
        await keyring.start(sessions)
        stack.push_async_callback(keyring.close)
        counters = build_counters(settings, engine)
        await counters.start()
        stack.push_async_callback(counters.close)
        audit = AuditLog(sessions, window_ms=settings.auth.audit_window_ms)
        await audit.start()
        stack.push_async_callback(audit.close)
        services = Services(
            settings=settings,
            engine=engine,
            sessions=sessions,
            embedder=embedder,
            vectors=vectors,
            llm=llm,
            ingestor=ingestor,
            retriever=retriever,
            chat=chat,
            caches=caches,
            conversations=conversations,
            lookup=lookup,
            metrics=metrics,
            query_batcher=query_batcher,
            llm_chain=llm_chain,
            tasks=tasks,
            index_flusher=index_flusher,
            ingest_embedder=ingest_embedder,
            keyring=keyring,
            audit=audit,
            quotas=Quotas(settings.auth, counters, sessions),
            cache_invalidations=SlidingWindow(settings.cache.invalidations_per_min),
            uncached_embedder=uncached_embedder,
            uncached_llm=uncached_llm,
            analyzer=DocumentAnalyzer(settings.analysis, llm) if settings.analysis.enabled
            else None,
        )
        services.agent = _agent_service(services, stack)
        await tasks.start(services)
        stack.push_async_callback(tasks.close)
        yield services


def _agent_service(services: Services, stack: AsyncExitStack) -> AgentService:
    from .agent.metrics import AgentMetrics
    from .agent.registry import build_registry

    registry = build_registry(services)
    stack.push_async_callback(registry.close)  # sql_query's connection pool
    return AgentService(services.settings, registry, registry.specs(),
                        sessions=services.sessions, lookup=services.lookup,
                        conversations=services.conversations, llm=services.llm,
                        metrics=AgentMetrics(services.metrics.registry))


async def _vector_store(settings: Settings, engine: AsyncEngine, dim: int,
                        role: Role) -> VectorStore:
    """pgvector when asked, or by default when migration 0003 gave the database its column.
    A Celery worker never searches: with the embedded index it writes the database only."""
    choice = settings.vector_store
    if settings.is_sqlite and choice == "pgvector":
        raise ServiceUnavailable(
            "METIS_VECTOR_STORE=pgvector needs a PostgreSQL METIS_DATABASE_URL.",
            code="pgvector_unavailable",
        )
    if not settings.is_sqlite and choice != "hnsw":
        async with engine.connect() as conn:
            has_column = await conn.run_sync(column_dim) is not None
        if choice == "pgvector" or has_column:
            pg = settings.postgres
            return PgVectorStore(engine, dim, ef_search=settings.retrieval.ef_search,
                                 m=pg.hnsw_m, ef_construction=pg.hnsw_ef_construction)
        log.warning("PostgreSQL without pgvector: vectors go to the embedded HNSW index")
    if role == "worker":
        return DatabaseOnlyVectors()
    return HnswVectorStore(
        settings.data_dir / "vectors", dim, ef_search=settings.retrieval.ef_search
    )
