"""`IngestEmbedder`: concurrent ingestions' chunks in slices, oldest document first, each
document's rows back in order, and a document done as soon as its last slice is."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from metis_rag.devtools.fake_llm import hashed_embeddings
from metis_rag.tasks.ingest_embedder import IngestEmbedder
from tests.test_batching import HashEmbedder


class GatedEmbedder(HashEmbedder):
    """A `HashEmbedder` whose every call waits for the test to let it through."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Semaphore(0)
        self.fail_next = False

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        await self.gate.acquire()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model failed")
        return hashed_embeddings(texts, self.dim)


def doc(name: str, n: int) -> list[str]:
    return [f"{name} chunk {i} about tokens" for i in range(n)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_documents_come_back_whole_and_in_order_from_slices() -> None:
    inner = HashEmbedder()
    embedder = IngestEmbedder(inner, slice_texts=4)
    docs = [doc("a", 3), doc("b", 6), doc("c", 1)]
    rows = await asyncio.gather(*(embedder.embed(d) for d in docs))
    for texts, matrix in zip(docs, rows, strict=True):
        np.testing.assert_allclose(matrix, hashed_embeddings(texts, inner.dim))
    assert all(len(call) <= 4 for call in inner.calls)
    assert sorted(t for call in inner.calls for t in call) == sorted(t for d in docs for t in d)
    await embedder.close()


async def test_the_oldest_document_is_done_while_the_model_works_on_the_next_slice() -> None:
    inner = GatedEmbedder()
    embedder = IngestEmbedder(inner, slice_texts=4)
    first = asyncio.create_task(embedder.embed(doc("a", 3)))
    second = asyncio.create_task(embedder.embed(doc("b", 6)))
    await settle()
    inner.gate.release()  # the first slice: a's 3 texts and b's first
    await settle()
    assert first.done() and not second.done()
    assert inner.calls == [doc("a", 3) + doc("b", 6)[:1], doc("b", 6)[1:5]]
    for _ in range(2):
        inner.gate.release()
    np.testing.assert_allclose(await second, hashed_embeddings(doc("b", 6), inner.dim))
    await embedder.close()


async def test_a_failed_call_fails_its_documents_only_and_a_cancelled_one_drops_out() -> None:
    inner = GatedEmbedder()
    embedder = IngestEmbedder(inner, slice_texts=2)
    failing = asyncio.create_task(embedder.embed(doc("a", 2)))
    cancelled = asyncio.create_task(embedder.embed(doc("b", 4)))
    fine = asyncio.create_task(embedder.embed(doc("c", 2)))
    await settle()
    inner.fail_next = True
    inner.gate.release()
    await settle()
    with pytest.raises(RuntimeError, match="the model failed"):
        await failing
    cancelled.cancel()
    await settle()
    for _ in range(3):
        inner.gate.release()
    np.testing.assert_allclose(await fine, hashed_embeddings(doc("c", 2), inner.dim))
    assert cancelled.cancelled()
    # b's first slice was already in the model when it was cancelled; its rest never went.
    assert [t for call in inner.calls for t in call if t.startswith("b ")] == doc("b", 4)[:2]
    await embedder.close()


class PerCallGates(HashEmbedder):
    """A `HashEmbedder` whose calls each wait for their own gate, so a test picks the order
    in which calls in flight finish."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []
        self.failing: set[int] = set()  # calls (by number) that raise

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        number = len(self.calls)
        self.calls.append(list(texts))
        self.gates.append(gate := asyncio.Event())
        await gate.wait()
        if number in self.failing:
            raise RuntimeError("the model failed")
        return hashed_embeddings(texts, self.dim)


async def test_two_calls_in_flight_put_a_document_back_together_in_order() -> None:
    inner = PerCallGates()
    embedder = IngestEmbedder(inner, slice_texts=3, in_flight=2)
    a = asyncio.create_task(embedder.embed(doc("a", 5)))
    b = asyncio.create_task(embedder.embed(doc("b", 2)))
    await settle()
    # Both slices went to the model at once, the second without waiting for the first.
    assert inner.calls == [doc("a", 5)[:3], doc("a", 5)[3:] + doc("b", 2)[:1]]
    inner.gates[1].set()  # the later slice finishes first
    await settle()
    assert not a.done() and not b.done()
    assert inner.calls[2] == doc("b", 2)[1:]  # its loop took the next slice meanwhile
    inner.gates[0].set()
    inner.gates[2].set()
    np.testing.assert_allclose(await a, hashed_embeddings(doc("a", 5), inner.dim))
    np.testing.assert_allclose(await b, hashed_embeddings(doc("b", 2), inner.dim))
    await embedder.close()


async def test_a_failed_call_in_flight_fails_only_the_documents_in_it() -> None:
    inner = PerCallGates()
    inner.failing.add(0)
    embedder = IngestEmbedder(inner, slice_texts=2, in_flight=2)
    spread = asyncio.create_task(embedder.embed(doc("a", 3)))  # in both calls
    later = asyncio.create_task(embedder.embed(doc("b", 1)))  # in the second only
    await settle()
    assert inner.calls == [doc("a", 3)[:2], doc("a", 3)[2:] + doc("b", 1)]
    inner.gates[0].set()
    await settle()
    with pytest.raises(RuntimeError, match="the model failed"):
        await spread
    inner.gates[1].set()
    np.testing.assert_allclose(await later, hashed_embeddings(doc("b", 1), inner.dim))
    await embedder.close()
