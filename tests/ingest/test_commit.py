"""The document write: one transaction in synchronous statements (on SQLite, one hop to the
writer's thread; on PostgreSQL, in the async engine's greenlet). A caller cancelled while it
runs cannot stop it, so the cancel waits for the commit and for the vector index to take the
committed chunks, and only then propagates: never a chunk the index does not know."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from metis_rag.config import Settings
from metis_rag.ingest.pipeline import Upload
from metis_rag.services import open_services
from metis_rag.store.db import Transactions
from metis_rag.store.models import Chunk, Document

TEXT = (b"Rotating the API keys of a running server takes two steps. First add the new key "
        b"beside the old one, then remove the old key once every client uses the new one.")


class HeldTransactions:
    """The real write, held until `gate` opens (a write the caller's cancel cannot reach)."""

    def __init__(self, real: Transactions) -> None:
        self.real = real
        self.inside = asyncio.Event()
        self.gate = asyncio.Event()

    async def run(self, work: Callable[[Any], Any]) -> Any:
        self.inside.set()
        await self.gate.wait()
        return await self.real.run(work)


@pytest.mark.databases
async def test_a_cancel_during_the_write_waits_for_the_commit_and_the_index(
        make_settings: Callable[..., Settings]) -> None:
    async with open_services(make_settings()) as services:
        ingestor = services.ingestor
        staged = await ingestor.stage([Upload("keys.txt", TEXT)])
        held = HeldTransactions(ingestor._transactions)  # type: ignore[arg-type]
        ingestor._transactions = held  # type: ignore[assignment]
        commit = asyncio.create_task(ingestor.commit("default", staged))
        await asyncio.wait_for(held.inside.wait(), 30)
        commit.cancel()
        await asyncio.sleep(0.05)
        assert not commit.done()  # it waits for the write it cannot stop
        held.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await commit
        async with services.sessions() as session:
            docs = (await session.execute(select(func.count()).select_from(Document))).scalar()
            chunk_ids = set((await session.execute(select(Chunk.id))).scalars())
            collection_id = (await session.execute(select(Document.collection_id))).scalar()
        assert docs == 1 and chunk_ids
        assert collection_id is not None
        assert await services.vectors.ids(collection_id) == chunk_ids
