"""The fake LLM server: protocols, injected failures, rate cap, hangs and stats."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from metis_rag.devtools.fake_llm import FakeLLMServer, fake_answer, hashed_embeddings
from tests.fakeclock import FakeClock
from tests.spawn import free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "[1] The sky is blue. Yes."}]}


@pytest.fixture
def fake(fake_server: FakeLLMServer) -> FakeLLMServer:
    fake_server.reset(config=True)
    return fake_server


@pytest.fixture
def http(fake: FakeLLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as client:
        yield client


def test_answer_cites_the_text_under_the_first_source_label() -> None:
    prompt = "Sources:\n\n[1] a.pdf (page 2)\nCats purr. Dogs bark.\n\n[2] b.md\nNo.\n\nQuestion: x"
    assert fake_answer([{"role": "user", "content": prompt}]) == "According to [1], Cats purr."
    one_line = "[3]: Water boils at 100 C at sea level. More."
    assert fake_answer([{"role": "user", "content": one_line}]) == (
        "According to [3], Water boils at 100 C at sea level."
    )
    assert fake_answer([{"role": "user", "content": "hello there"}]).endswith("hello there")


def test_embeddings_are_unit_deterministic_and_similar_for_similar_texts() -> None:
    vectors = hashed_embeddings(["the cat sat on the mat", "the cat sat", "stock prices fell"], 64)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    np.testing.assert_array_equal(
        vectors,
        hashed_embeddings(["the cat sat on the mat", "the cat sat", "stock prices fell"], 64),
    )


def test_ollama_chat_streams_ndjson_by_default(http: httpx.Client) -> None:
    lines = [orjson.loads(line) for line in http.post("/api/chat", json=CHAT).text.splitlines()]
    assert "".join(e["message"]["content"] for e in lines) == "According to [1], The sky is blue."
    assert [e["done"] for e in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[-1]["eval_count"] == len(lines) - 1
    whole = http.post("/api/chat", json=CHAT | {"stream": False}).json()
    assert whole["message"]["content"] == "According to [1], The sky is blue."
    assert (whole["prompt_eval_count"], whole["eval_count"]) == (6, 7)


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_streams_sse_ending_with_done(http: httpx.Client, include_usage: bool) -> None:
    body = CHAT | {"stream": True, "stream_options": {"include_usage": include_usage}}
    events = [line[6:] for line in http.post("/v1/chat/completions", json=body).text.split("\n\n")]
    assert events[-2:] == ["[DONE]", ""]
    chunks = [orjson.loads(e) for e in events[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "According to [1], The sky is blue."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    expected = {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}
    assert usage == ([expected] if include_usage else [])
    whole = http.post("/v1/chat/completions", json=CHAT).json()
    assert whole["choices"][0]["message"]["content"] == text
    assert whole["usage"] == expected


def test_embedding_endpoints_agree_and_keep_order(http: httpx.Client, fake: FakeLLMServer) -> None:
    texts = ["alpha beta", "gamma", "alpha beta gamma"]
    ollama = np.array(
        http.post("/api/embed", json={"model": "e", "input": texts}).json()["embeddings"]
    )
    data = http.post("/v1/embeddings", json={"model": "e", "input": texts}).json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d["embedding"] for d in data]), ollama, rtol=1e-6)
    np.testing.assert_allclose(ollama, hashed_embeddings(texts, 384), rtol=1e-6)
    one = http.post("/api/embed", json={"model": "e", "input": "gamma"}).json()["embeddings"]
    np.testing.assert_allclose(one, ollama[1:2], rtol=1e-6)
    fake.configure(embed_dim=16)
    assert len(http.post("/api/embed", json={"input": "x"}).json()["embeddings"][0]) == 16
    sized = http.post("/v1/embeddings", json={"input": "x", "dimensions": 8}).json()
    assert len(sized["data"][0]["embedding"]) == 8


def test_model_listings(http: httpx.Client) -> None:
    assert http.get("/api/tags").json()["models"][0]["name"] == "fake:latest"
    assert http.get("/v1/models").json()["data"][0]["id"] == "fake"


@pytest.mark.parametrize(("rate", "failed"), [(0.5, 10), (0.25, 5), (1.0, 20), (0.0, 0)])
def test_fail_rate_fails_that_exact_share(
    http: httpx.Client, fake: FakeLLMServer, rate: float, failed: int
) -> None:
    fake.configure(fail_rate=rate, fail_status=503)
    statuses = [
        http.post("/api/chat", json=CHAT | {"stream": False}).status_code for _ in range(20)
    ]
    assert statuses.count(503) == failed
    assert statuses.count(200) == 20 - failed
    assert fake.stats()["failures"] == failed


def test_429_failures_send_retry_after(http: httpx.Client, fake: FakeLLMServer) -> None:
    fake.configure(fail_rate=1.0, fail_status=429, retry_after_s=2.5)
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2.5"
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    assert http.post("/api/embed", json={"input": "x"}).json() == {"error": "injected failure"}


def test_rate_cap_answers_429_beyond_max_rps_in_any_second() -> None:
    clock = FakeClock(100.0)
    with FakeLLMServer(clock=clock, max_rps=5) as fake, httpx.Client(base_url=fake.url) as http:
        statuses = [http.post("/api/chat", json=CHAT).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        clock.now += 0.5
        refused = http.post("/api/chat", json=CHAT)
        assert refused.status_code == 429
        assert float(refused.headers["retry-after"]) == pytest.approx(0.5)
        clock.now += 0.5
        assert http.post("/api/chat", json=CHAT).status_code == 200
        clock.now += 1.5
        assert http.post("/api/chat", json=CHAT).status_code == 200
        stats = fake.stats()
        assert stats["rate_limited"] == 4
        assert stats["requests_per_second"] == [9, 1, 1]
        assert stats["requests"] == {"/api/chat": 11}


async def test_stats_count_concurrency_and_reset(fake: FakeLLMServer) -> None:
    fake.configure(latency_ms=300)
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as http:
        await asyncio.gather(*(http.post("/v1/embeddings", json={"input": "x"}) for _ in range(6)))
        await http.get("/v1/models")
    stats = fake.stats()
    assert stats["max_concurrency"] == 6
    assert stats["in_flight"] == 0
    assert stats["requests"] == {"/v1/embeddings": 6, "/v1/models": 1}
    assert sum(stats["requests_per_second"]) == stats["requests_total"] == 7
    fake.reset()
    assert fake.stats()["requests_total"] == 0
    assert fake.configure().latency_ms == 300


def test_config_over_http(http: httpx.Client) -> None:
    assert http.post("/_config", json={"latency_ms": 5, "hang": False}).json()["latency_ms"] == 5
    assert http.get("/_config").json()["latency_ms"] == 5
    assert http.post("/_config", json={"nonsense": 1}).status_code == 400
    assert http.post("/_config", json={"fail_rate": 2}).status_code == 400
    http.post("/api/tags")  # wrong method, still counted
    assert http.get("/_stats").json()["requests_total"] == 1
    assert http.post("/_reset", json={"config": True}).json()["requests_total"] == 0
    assert http.get("/_config").json()["latency_ms"] == 0


def test_hang_never_answers_and_lets_go_when_the_client_does(
    http: httpx.Client, fake: FakeLLMServer
) -> None:
    fake.configure(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/api/chat", json=CHAT, timeout=0.3)
    deadline = time.monotonic() + 5
    while fake.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.stats()["in_flight"] == 0


def test_api_key_is_enforced_when_set(http: httpx.Client, fake: FakeLLMServer) -> None:
    fake.configure(api_key="k")
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 401
    headers = {"Authorization": "Bearer k"}
    assert http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


async def test_async_context_manager() -> None:
    async with FakeLLMServer(latency_ms=1) as fake:
        async with httpx.AsyncClient() as http:
            assert (await http.get(fake.url + "/api/tags")).status_code == 200
        assert fake.stats()["requests_total"] == 1


def test_cli_serves_with_the_given_behaviour() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "metis_rag.devtools.fake_llm", "--port", str(port)]
    cmd += ["--latency-ms", "5", "--fail-rate", "0.5", "--fail-status", "429"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/_config").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        assert (config["latency_ms"], config["fail_rate"], config["fail_status"]) == (5, 0.5, 429)
        url = f"http://127.0.0.1:{port}/api/chat"
        assert [httpx.post(url, json=CHAT).status_code for _ in range(2)] == [200, 429]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
