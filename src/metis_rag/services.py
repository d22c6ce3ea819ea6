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

from .cache.levels import Caches, open_caches
from .config import Settings
from .embed import build_embedder
from .embed.base import Embedder
from .embed.cached import CachedEmbedder
from .ingest.chunker import Chunker
from .ingest.pipeline import Ingestor, reconcile
from .llm import build_llm
from .llm.base import LLM
from .llm.cached import CachedLLM
from .rag.chat import ChatService
from .rag.retriever import Retriever
from .store.db import create_engine, migrate, session_factory
from .store.hnsw import HnswVectorStore
from .store.vectors import VectorStore
from .tasks import Role, build_backend
from .tasks.base import TaskBackend
from .tasks.handlers import IngestEmbedder, build_registry
from .tasks.index import DatabaseOnlyVectors, IndexFlusher

log = logging.getLogger("metis")


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    embedder: Embedder
    vectors: VectorStore
    llm: LLM | None
    ingestor: Ingestor
    retriever: Retriever
    chat: ChatService
    caches: Caches | None
    tasks: TaskBackend
    index_flusher: IndexFlusher
    ingest_embedder: IngestEmbedder


@asynccontextmanager
async def open_services(settings: Settings, *, role: Role = "server") -> AsyncIterator[Services]:
    """`role`: server (runs tasks), client (a CLI command: submits and reads tasks only) or
    worker (a Celery worker: writes chunks to the database, leaves the index to servers)."""
    async with AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        await migrate(engine)
        sessions = session_factory(engine)

        embedder: Embedder = build_embedder(settings.embed, settings.data_dir)
        await embedder.start()
        stack.push_async_callback(embedder.close)
        caches: Caches | None = None
        if settings.cache.enabled:
            caches = await open_caches(settings.cache, settings.data_dir, embedder.dim, stack)
            embedder = CachedEmbedder(embedder, caches.embedding)

        vectors: VectorStore
        if role == "worker":
            vectors = DatabaseOnlyVectors()
        else:
            vectors = HnswVectorStore(
                settings.data_dir / "vectors", embedder.dim, ef_search=settings.retrieval.ef_search
            )
            await vectors.start()
            stack.push_async_callback(vectors.close)
            fixed = await reconcile(sessions, vectors)
            if fixed["added"] or fixed["removed"]:
                log.warning("vector index reconciled with the database: %s", fixed)

        llm = build_llm(settings.llm)
        if llm is not None:
            await llm.start()
            stack.push_async_callback(llm.close)
            if caches is not None:
                llm = CachedLLM(llm, caches.llm)

        chunker = Chunker(
            embedder.count_tokens, settings.chunk.max_tokens, settings.chunk.overlap_tokens
        )
        ingestor = Ingestor(
            sessions, embedder, vectors, chunker, max_bytes=settings.max_upload_bytes,
            document_cache=caches.document if caches else None,
        )
        retriever = Retriever(sessions, vectors, settings.retrieval,
                              caches.retrieval if caches else None)
        chat = ChatService(settings, sessions, embedder, retriever, llm, caches)
        index_flusher = IndexFlusher(vectors)
        stack.push_async_callback(index_flusher.close)
        ingest_embedder = IngestEmbedder(embedder)
        stack.push_async_callback(ingest_embedder.close)
        tasks = build_backend(settings, engine, build_registry(settings.tasks), role)
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
            tasks=tasks,
            index_flusher=index_flusher,
            ingest_embedder=ingest_embedder,
        )
        await tasks.start(services)
        stack.push_async_callback(tasks.close)
        yield services
