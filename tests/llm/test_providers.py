"""One contract suite for every `LLM` backend, run against the fake Ollama/OpenAI server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from metis_rag.config import LLMSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.errors import ProviderError, ProviderTimeout
from metis_rag.llm import build_llm
from metis_rag.llm.base import LLM, ChatMessage
from metis_rag.llm.http import ChatStream
from tests.waiting import eventually

PROVIDERS = ["ollama", "openai"]
SOURCE_TEXT = "The refund window is 30 days. Items must be unused."
MESSAGES = [
    ChatMessage("system", "Answer from the numbered sources; cite them as [1], [2]."),
    ChatMessage(
        "user",
        f"Sources:\n\n[1] policy.pdf (page 2)\n{SOURCE_TEXT}\n\n[2] faq.md\nShipping is free."
        "\n\nQuestion: how long is the refund window?",
    ),
]
ANSWER = "According to [1], The refund window is 30 days."
PROMPT_WORDS = sum(len(m.content.split()) for m in MESSAGES)


@pytest.fixture
def fake(fake_server: FakeLLMServer) -> FakeLLMServer:
    fake_server.reset(config=True)
    return fake_server


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def started(provider: str, url: str, **settings: Any) -> AsyncIterator[LLM]:
    llm = build_llm(LLMSettings(provider=provider, url=url, model="fake-model", **settings))
    assert llm is not None
    await llm.start()
    try:
        yield llm
    finally:
        await llm.close()


@pytest.fixture
async def llm(provider: str, fake: FakeLLMServer) -> AsyncIterator[LLM]:
    async with started(provider, fake.url, timeout_s=10) as llm:
        yield llm


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_name_is_provider_and_model(llm: LLM, provider: str) -> None:
    assert llm.name == f"{provider}:fake-model"


async def test_complete_answers_with_a_citation_and_usage(llm: LLM) -> None:
    done = await llm.complete(MESSAGES, temperature=0.0, max_tokens=100)
    assert done.text == ANSWER
    assert done.prompt_tokens == PROMPT_WORDS
    assert done.completion_tokens == len(ANSWER.split())
    assert done.extra["finish_reason"] == "stop"


async def test_complete_stops_at_max_tokens(llm: LLM) -> None:
    done = await llm.complete(MESSAGES, temperature=0.0, max_tokens=3)
    assert done.text == "According to [1],"
    assert done.completion_tokens == 3
    assert done.extra["finish_reason"] == "length"


async def test_stream_deltas_join_to_the_answer_and_usage_follows(llm: LLM) -> None:
    stream = llm.stream(MESSAGES, temperature=0.0, max_tokens=100)
    assert isinstance(stream, ChatStream)
    assert stream.completion is None
    deltas = await collect(stream)
    assert len(deltas) == len(ANSWER.split())
    assert "".join(deltas) == ANSWER
    assert stream.completion is not None
    assert stream.completion.text == ANSWER
    assert stream.completion.prompt_tokens == PROMPT_WORDS
    assert stream.completion.completion_tokens == len(deltas)


async def test_stream_delivers_tokens_as_they_are_generated(llm: LLM, fake: FakeLLMServer) -> None:
    fake.configure(tokens_per_s=10, answer=" ".join(["word"] * 10))  # one second in all
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals = [
        loop.time() - start async for _ in llm.stream(MESSAGES, temperature=0, max_tokens=50)
    ]
    assert len(arrivals) == 10
    # A client that buffered the response would see every delta only after the last one.
    assert arrivals[-1] - arrivals[0] > 0.6


async def test_breaking_out_of_a_stream_releases_the_request(llm: LLM, fake: FakeLLMServer) -> None:
    fake.configure(tokens_per_s=20, answer=" ".join(["word"] * 100))
    stream = llm.stream(MESSAGES, temperature=0, max_tokens=200)
    assert isinstance(stream, ChatStream)
    async with stream:
        async for _ in stream:
            break
    await eventually(lambda: fake.stats()["in_flight"] == 0,
                     what="the abandoned stream's request is still in flight")
    fake.configure(tokens_per_s=0)
    assert (await llm.complete(MESSAGES, temperature=0, max_tokens=100)).text.startswith("word")


async def test_concurrent_requests_are_not_serialised(llm: LLM, fake: FakeLLMServer) -> None:
    fake.configure(latency_ms=300)
    answers = await asyncio.gather(
        *(llm.complete(MESSAGES, temperature=0, max_tokens=100) for _ in range(12))
    )
    assert {a.text for a in answers} == {ANSWER}
    assert fake.stats()["max_concurrency"] == 12


async def test_a_hanging_provider_times_out(provider: str, fake: FakeLLMServer) -> None:
    fake.configure(hang=True)
    async with started(provider, fake.url, timeout_s=0.3) as llm:
        with pytest.raises(ProviderTimeout):
            await llm.complete(MESSAGES, temperature=0, max_tokens=10)
        with pytest.raises(ProviderTimeout):
            await collect(llm.stream(MESSAGES, temperature=0, max_tokens=10))


async def test_the_timeout_bounds_a_whole_slow_stream(provider: str, fake: FakeLLMServer) -> None:
    # Every token comes within the read timeout; only the total deadline can stop this one.
    fake.configure(tokens_per_s=5, answer=" ".join(["word"] * 20))
    got: list[str] = []
    async with started(provider, fake.url, timeout_s=0.7) as llm:
        with pytest.raises(ProviderTimeout):
            async for delta in llm.stream(MESSAGES, temperature=0, max_tokens=50):
                got.append(delta)
    assert 1 <= len(got) < 20


async def test_429_carries_status_and_retry_after(llm: LLM, fake: FakeLLMServer) -> None:
    fake.configure(fail_rate=1.0, fail_status=429, retry_after_s=2.5)
    with pytest.raises(ProviderError) as complete_error:
        await llm.complete(MESSAGES, temperature=0, max_tokens=10)
    with pytest.raises(ProviderError) as stream_error:
        await collect(llm.stream(MESSAGES, temperature=0, max_tokens=10))
    for error in (complete_error.value, stream_error.value):
        assert not isinstance(error, ProviderTimeout)
        assert error.upstream_status == 429
        assert error.retry_after_s == 2.5
        assert "injected failure" in error.message


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_carry_the_status(llm: LLM, fake: FakeLLMServer, status: int) -> None:
    fake.configure(fail_rate=1.0, fail_status=status)
    with pytest.raises(ProviderError) as complete_error:
        await llm.complete(MESSAGES, temperature=0, max_tokens=10)
    with pytest.raises(ProviderError) as stream_error:
        await collect(llm.stream(MESSAGES, temperature=0, max_tokens=10))
    for error in (complete_error.value, stream_error.value):
        assert (error.upstream_status, error.retry_after_s) == (status, None)


async def test_malformed_answers_are_provider_errors(llm: LLM, fake: FakeLLMServer) -> None:
    fake.configure(malformed=True)
    with pytest.raises(ProviderError, match="malformed"):
        await llm.complete(MESSAGES, temperature=0, max_tokens=10)
    with pytest.raises(ProviderError):
        await collect(llm.stream(MESSAGES, temperature=0, max_tokens=10))


async def test_connection_refused_is_a_provider_error(provider: str) -> None:
    async with started(provider, closed_port_url(), timeout_s=5) as llm:
        with pytest.raises(ProviderError) as complete_error:
            await llm.complete(MESSAGES, temperature=0, max_tokens=10)
        with pytest.raises(ProviderError) as stream_error:
            await collect(llm.stream(MESSAGES, temperature=0, max_tokens=10))
    for error in (complete_error.value, stream_error.value):
        assert not isinstance(error, ProviderTimeout)
        assert error.upstream_status is None


async def test_calls_before_start_fail_clearly(provider: str, fake: FakeLLMServer) -> None:
    llm = build_llm(LLMSettings(provider=provider, url=fake.url, model="m"))
    assert llm is not None
    with pytest.raises(RuntimeError, match="start"):
        await llm.complete(MESSAGES, temperature=0, max_tokens=10)


async def test_openai_sends_the_api_key(fake: FakeLLMServer) -> None:
    fake.configure(api_key="sk-test")
    async with started("openai", fake.url, api_key="sk-test") as llm:
        assert (await llm.complete(MESSAGES, temperature=0, max_tokens=100)).text == ANSWER
    async with started("openai", fake.url, api_key="wrong") as llm:
        with pytest.raises(ProviderError) as error:
            await llm.complete(MESSAGES, temperature=0, max_tokens=100)
    assert error.value.upstream_status == 401


async def test_openai_url_may_include_the_v1_path(fake: FakeLLMServer) -> None:
    async with started("openai", fake.url + "/v1") as llm:
        assert (await llm.complete(MESSAGES, temperature=0, max_tokens=100)).text == ANSWER


def test_build_llm_none_means_no_model() -> None:
    assert build_llm(LLMSettings(provider="none")) is None
