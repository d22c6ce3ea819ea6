"""The default embedder, the int8 ONNX export of the packaged model, against the model it was
made from: sentence-transformers on torch, on real sentences of several lengths."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np

from metis_rag.config import EmbedSettings
from metis_rag.embed.onnx import OnnxEmbedder
from metis_rag.embed.packaged import packaged_model_dir

TEXTS = [
    "How do I rotate the API keys?",
    "The refund window is 30 days. Items must be unused and in their box.",
    "Parcels leave the warehouse within two working days of the order.",
    "Die Rechnung wird am Monatsende per E-Mail verschickt.",
    "def parse(text: str) -> list[str]: return text.split()",
    " ".join(["Metis keeps every chunk's vector beside its text so a crash never separates the "
              "two, and the index is rebuilt from the stored embeddings at start-up."] * 6),
    "Scheduled tasks start on time; a task with dependencies waits until they complete, and a "
    "failed or cancelled dependency fails it with that reason.",
]
# One or two words: dynamic int8 quantization of the MatMuls costs these the most, and more
# when they share a call (activations are quantized per call): "ok" measured 0.971 alone and
# 0.952 beside other short texts (0.935 on an AVX2-only CPU when it shared a call with
# 256-token texts: the embedder now batches similar lengths together). A guard against
# regressions, not the 0.98 target, which is about chunks and sentences (README, Benchmarks).
SHORT = ["ok", "yes", "pricing", "api keys", "hello world", "docker"]


def test_int8_embeddings_stay_close_to_torch(prepared_models: Path) -> None:
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch_model = SentenceTransformer(str(packaged_model_dir()), device="cpu")
    reference = torch_model.encode(TEXTS + SHORT, normalize_embeddings=True)

    async def ours() -> np.ndarray:
        embedder = OnnxEmbedder(EmbedSettings(), prepared_models)
        await embedder.start()
        try:
            return await embedder.embed(TEXTS + SHORT)
        finally:
            await embedder.close()

    got = asyncio.run(ours())
    assert got.shape == reference.shape == (len(TEXTS) + len(SHORT), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cosines = np.sum(got * reference, axis=1)
    long, short = cosines[: len(TEXTS)], cosines[len(TEXTS) :]
    assert long.min() >= 0.98, dict(zip(TEXTS, long.round(4), strict=True))
    assert short.min() >= 0.94, dict(zip(SHORT, short.round(4), strict=True))
    assert short.mean() >= 0.97
    # Not a degenerate model that maps everything to one point: texts stay apart.
    assert float((got @ got.T)[0, 1]) < 0.9


def test_questions_through_the_query_session_embed_as_in_a_batch(prepared_models: Path) -> None:
    async def run() -> tuple[np.ndarray, np.ndarray]:
        embedder = OnnxEmbedder(EmbedSettings(query_threads=1), prepared_models)
        await embedder.start()
        try:
            assert embedder._query_session is not None
            alone = np.vstack([await embedder.embed([t]) for t in SHORT])  # query session
            batched = np.vstack([embedder.embed_sync([t] * 5)[:1] for t in SHORT])  # main one
            return alone, batched
        finally:
            await embedder.close()

    alone, batched = asyncio.run(run())
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    no_second = OnnxEmbedder(EmbedSettings(query_threads=0), prepared_models)
    asyncio.run(no_second.start())
    assert no_second._query_session is None


def test_batches_group_similar_lengths_and_cover_every_text() -> None:
    from metis_rag.embed.onnx import _batches

    lengths = [900, 2, 40, 3, 35, 1000, 5, 950, 38]
    batches = _batches(lengths, size=2)
    assert sorted(int(i) for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 2 for batch in batches)
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        assert max(sizes) <= 2 * min(sizes) + 16, sizes
    # The short ones are never put beside a long one, even with room in the batch.
    assert [sorted(lengths[i] for i in b) for b in _batches(lengths, size=32)] == [
        [2, 3, 5], [35, 38, 40], [900, 950, 1000]]


def test_batches_run_at_once_embed_as_one_after_another(prepared_models: Path) -> None:
    texts = (TEXTS + SHORT) * 5  # several batches of each length

    def embed(threads: int) -> np.ndarray:
        embedder = OnnxEmbedder(EmbedSettings(threads=threads, local_batch_size=4), prepared_models)
        asyncio.run(embedder.start())
        try:
            assert (embedder._pool is not None) == (threads > 1)
            return embedder.embed_sync(texts)
        finally:
            asyncio.run(embedder.close())

    # Each batch runs on one core either way: the same numbers, not just close ones.
    np.testing.assert_array_equal(embed(2), embed(1))


def test_a_question_runs_beside_a_chunk_batch(prepared_models: Path) -> None:
    """A question's run does not wait for a chunk batch's to end (it waited on one lock until
    2026-12-07): the test holds a chunk batch inside the model and asks a question meanwhile."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    embedder = OnnxEmbedder(EmbedSettings(threads=2, local_batch_size=4), prepared_models)
    asyncio.run(embedder.start())
    session, inside, release = embedder._session, threading.Event(), threading.Event()

    class Held:
        def run(self, outputs: object, feed: dict[str, np.ndarray]) -> object:
            if len(feed["input_ids"]) > 1:  # a chunk batch: held until the question is done
                inside.set()
                assert release.wait(30)
            return session.run(outputs, feed)

    embedder._session = Held()
    try:
        with ThreadPoolExecutor(1) as pool:
            chunks = pool.submit(embedder.embed_sync, TEXTS[:4])
            assert inside.wait(30)
            question = embedder.embed_sync([SHORT[1]])  # would block here behind the batch
            release.set()
            np.testing.assert_array_equal(question, embedder.embed_sync([SHORT[1]]))
            assert chunks.result(30).shape == (4, 384)
    finally:
        release.set()
        asyncio.run(embedder.close())


def test_at_the_default_batch_a_text_gets_one_vector_whatever_it_is_embedded_with(
        prepared_models: Path) -> None:
    # One text per run (the measured fastest, README: bench_embed_batch.py): int8 activations
    # are quantized per run, so a text's vector no longer depends on its batch's other texts,
    # and a chunk embedded at ingestion equals the same text embedded alone.
    embedder = OnnxEmbedder(EmbedSettings(threads=2), prepared_models)
    asyncio.run(embedder.start())
    try:
        together = embedder.embed_sync(TEXTS + SHORT)
        alone = np.vstack([embedder.embed_sync([t]) for t in TEXTS + SHORT])
        np.testing.assert_array_equal(together, alone)
    finally:
        asyncio.run(embedder.close())
