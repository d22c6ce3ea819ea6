"""The remote `Embedder` backends (OpenAI and Ollama HTTP APIs) against the fake server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from metis_rag.config import EmbedSettings
from metis_rag.devtools.fake_llm import FakeLLMServer, hashed_embeddings
from metis_rag.embed import packaged
from metis_rag.embed.base import Embedder
from metis_rag.embed.ollama import OllamaEmbedder
from metis_rag.embed.openai import OpenAIEmbedder
from metis_rag.errors import ProviderError, ProviderTimeout

BACKENDS: dict[str, tuple[type[OpenAIEmbedder | OllamaEmbedder], str]] = {
    "openai": (OpenAIEmbedder, "/v1/embeddings"),
    "ollama": (OllamaEmbedder, "/api/embed"),
}
TEXTS = [
    "The refund window is 30 days.",
    "Shipping is free above 50 euros.",
    "Refunds take 30 days to arrive.",
    "Our office is closed on Sundays.",
    "A refund needs the receipt.",
    "Shipping takes two days.",
    "Sundays are quiet.",
]


@pytest.fixture
def fake(fake_server: FakeLLMServer) -> FakeLLMServer:
    fake_server.reset(config=True)
    return fake_server


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def started(backend: str, url: str, **settings: Any) -> AsyncIterator[Embedder]:
    cls = BACKENDS[backend][0]
    embedder: Embedder = cls(
        EmbedSettings(backend=backend, url=url, model="fake-embed", **settings)
    )
    await embedder.start()
    try:
        yield embedder
    finally:
        await embedder.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_start_learns_the_dimension(backend: str, fake: FakeLLMServer) -> None:
    fake.configure(embed_dim=48)
    async with started(backend, fake.url) as embedder:
        assert embedder.dim == 48
        assert embedder.model_id == f"{backend}:fake-embed"


async def test_vectors_are_unit_float32_in_input_order(backend: str, fake: FakeLLMServer) -> None:
    async with started(backend, fake.url, batch_size=3) as embedder:
        vectors = await embedder.embed(TEXTS)
        assert vectors.dtype == np.float32
        assert vectors.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(vectors, hashed_embeddings(TEXTS, 384), atol=1e-6)
        backwards = await embedder.embed(TEXTS[::-1])
        np.testing.assert_allclose(backwards[::-1], vectors, atol=1e-6)


async def test_texts_are_sent_in_batches_of_batch_size(backend: str, fake: FakeLLMServer) -> None:
    async with started(backend, fake.url, batch_size=3) as embedder:
        fake.reset()
        await embedder.embed(TEXTS)
        assert fake.stats()["requests"] == {BACKENDS[backend][1]: 3}


async def test_no_texts_make_no_request(backend: str, fake: FakeLLMServer) -> None:
    async with started(backend, fake.url) as embedder:
        fake.reset()
        assert (await embedder.embed([])).shape == (0, embedder.dim)
        assert fake.stats()["requests_total"] == 0


async def test_count_tokens_uses_the_packaged_tokenizer(backend: str, fake: FakeLLMServer) -> None:
    async with started(backend, fake.url) as embedder:
        assert embedder.count_tokens(TEXTS[:2]) == packaged.count_tokens(TEXTS[:2])


async def test_upstream_errors_carry_status_and_retry_after(
    backend: str, fake: FakeLLMServer
) -> None:
    async with started(backend, fake.url) as embedder:
        fake.configure(fail_rate=1.0, fail_status=429, retry_after_s=3)
        with pytest.raises(ProviderError) as limited:
            await embedder.embed(TEXTS)
        assert (limited.value.upstream_status, limited.value.retry_after_s) == (429, 3.0)
        fake.configure(fail_status=500)
        with pytest.raises(ProviderError) as failed:
            await embedder.embed(TEXTS)
        assert (failed.value.upstream_status, failed.value.retry_after_s) == (500, None)


async def test_a_hanging_backend_times_out(backend: str, fake: FakeLLMServer) -> None:
    async with started(backend, fake.url, timeout_s=0.3) as embedder:
        fake.configure(hang=True)
        with pytest.raises(ProviderTimeout):
            await embedder.embed(TEXTS)


async def test_malformed_or_resized_answers_are_provider_errors(
    backend: str, fake: FakeLLMServer
) -> None:
    async with started(backend, fake.url) as embedder:
        fake.configure(embed_dim=100)
        with pytest.raises(ProviderError, match="malformed"):
            await embedder.embed(TEXTS)
        fake.configure(embed_dim=384, malformed=True)
        with pytest.raises(ProviderError, match="malformed"):
            await embedder.embed(TEXTS)


async def test_an_unreachable_backend_fails_at_start(backend: str) -> None:
    embedder = BACKENDS[backend][0](EmbedSettings(backend=backend, url=closed_port_url()))
    with pytest.raises(ProviderError) as error:
        await embedder.start()
    assert not isinstance(error.value, ProviderTimeout)
    with pytest.raises(RuntimeError, match="start"):
        await embedder.embed(TEXTS)
