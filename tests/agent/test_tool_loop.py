"""Tool calling in both protocols against the fake LLM server: scripted calls, malformed calls,
loops, timeouts, and the LLM cache over tool turns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from metis_rag.agent.builtin_calculator import Calculator
from metis_rag.agent.loop import run_tool_loop
from metis_rag.agent.registry import ToolRegistry
from metis_rag.agent.tools import ToolContext, ToolResult, ToolSpec
from metis_rag.cache.memory import MemoryBackend
from metis_rag.cache.tiered import TieredCache
from metis_rag.config import LLMSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.errors import ProviderError, ProviderTimeout
from metis_rag.llm import build_llm
from metis_rag.llm.base import LLM, ChatMessage
from metis_rag.llm.cached import CachedLLM

CTX = ToolContext(tenant="default", collection="docs")
ASK = [ChatMessage("user", "What is 17 * 23?")]


class Lookup:
    """A document tool whose answer cites a source, as rag_search does."""

    spec = ToolSpec("lookup", "Look a fact up.", {
        "type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]})

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        self.runs += 1
        return ToolResult(f"[1] facts.md\nThe {arguments['topic']} is blue.")


@pytest.fixture
def fake(fake_server: FakeLLMServer) -> FakeLLMServer:
    fake_server.reset(config=True)
    fake_server.script_tools([])
    return fake_server


@pytest.fixture(params=["ollama", "openai"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def started(provider: str, url: str, **kw: Any) -> AsyncIterator[LLM]:
    llm = build_llm(LLMSettings(provider=provider, url=url, model="m", **kw))  # type: ignore[arg-type]
    assert llm is not None
    await llm.start()
    try:
        yield llm
    finally:
        await llm.close()


def registry(*extra: Any) -> ToolRegistry:
    return ToolRegistry([Calculator(), *extra], cache=None)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


async def test_the_model_calls_a_tool_and_answers_from_its_result(
        fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"tool_calls": [call("calculator", expression="17 * 23")]},
                       {"content": "17 * 23 is 391."}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(), ASK, CTX)
    assert out.text == "17 * 23 is 391." and out.stopped == "answered" and out.rounds == 1
    [(tool_call, result)] = out.calls
    assert tool_call.name == "calculator" and result.data["value"] == 391
    first, second = fake.tool_requests()
    assert first["tools"] == ["calculator"]
    # The second request carries the assistant's call and the tool's answer, in the protocol.
    tool_turn = second["messages"][-1]
    assert tool_turn["role"] == "tool" and "391" in tool_turn["content"]
    assistant = second["messages"][-2]
    fn = assistant["tool_calls"][0]["function"]
    if provider == "openai":
        assert tool_turn["tool_call_id"] == assistant["tool_calls"][0]["id"]
        assert fn["arguments"] == '{"expression": "17 * 23"}'  # a JSON string
    else:
        assert tool_turn["tool_name"] == "calculator"
        assert fn["arguments"] == {"expression": "17 * 23"}  # an object


async def test_parallel_calls_in_one_turn_all_run_and_are_all_answered(
        fake: FakeLLMServer, provider: str) -> None:
    lookup = Lookup()
    fake.script_tools([{"tool_calls": [call("lookup", topic="sky"), call("calculator",
                                                                          expression="2^10")]}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(lookup), ASK, CTX)
    assert [r.content for _, r in out.calls] == ["[1] facts.md\nThe sky is blue.", "2^10 = 1024"]
    # With the script used up the fake answers from the numbered source in the tool turn.
    assert out.text == "According to [1], The sky is blue."
    assert len([m for m in fake.tool_requests()[-1]["messages"] if m["role"] == "tool"]) == 2


@pytest.mark.parametrize("raw", [
    {"openai": [{"id": "c1", "type": "function",
                 "function": {"name": "calculator", "arguments": "{not json"}}],
     "ollama": [{"function": {"name": "calculator", "arguments": "{not json"}}]},
    {"openai": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}],
     "ollama": [{"function": {"arguments": {}}}]},
    {"openai": [{"id": "c1", "type": "function",
                 "function": {"name": "calculator", "arguments": "[1, 2]"}}],
     "ollama": [{"function": {"name": "calculator", "arguments": [1, 2]}}]},
    {"openai": ["just a string"], "ollama": ["just a string"]},
], ids=["broken-json", "no-name", "not-an-object", "not-a-call"])
async def test_malformed_calls_are_answered_with_an_error_and_the_loop_goes_on(
        fake: FakeLLMServer, provider: str, raw: dict[str, Any]) -> None:
    fake.script_tools([{"raw_tool_calls": raw[provider]}, {"content": "Sorry, done."}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(), ASK, CTX)
    assert out.text == "Sorry, done."
    [(_, result)] = out.calls
    assert result.error == "malformed_tool_call"
    assert fake.tool_requests()[-1]["messages"][-1]["content"].startswith(
        "Error (malformed_tool_call)")


async def test_unknown_tools_and_bad_arguments_are_reported_to_the_model(
        fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"tool_calls": [call("rm_rf", path="/"),
                                       call("calculator", expression="__import__('os')"),
                                       call("calculator", expr="1+1")]},
                       {"content": "ok"}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(), ASK, CTX)
    assert [r.error for _, r in out.calls] == ["tool_not_found", "invalid_expression",
                                                "invalid_arguments"]
    assert out.text == "ok"


async def test_a_tool_call_that_is_not_a_list_is_a_provider_error(
        fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"raw_tool_calls": {"name": "calculator"}}])
    async with started(provider, fake.url) as llm:
        with pytest.raises(ProviderError):
            await run_tool_loop(llm, registry(), ASK, CTX)


async def test_a_model_stuck_in_a_tool_loop_is_cut_off_and_still_answers(
        fake: FakeLLMServer, provider: str) -> None:
    lookup = Lookup()
    fake.script_tools([{"tool_calls": [call("lookup", topic="sky")], "repeat": True}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(lookup), ASK, CTX, max_rounds=3)
    assert out.stopped == "max_rounds" and out.rounds == 3 and lookup.runs == 3
    # The last request declares no tools, so the script does not answer it: the fake derives
    # the answer from the tool turns.
    assert len(fake.tool_requests()) == 3
    assert out.text == "According to [1], The sky is blue."


async def test_too_many_calls_in_one_turn_are_refused_beyond_the_limit(
        fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"tool_calls": [call("calculator", expression=f"{i}+1")
                                       for i in range(5)]}, {"content": "done"}])
    async with started(provider, fake.url) as llm:
        out = await run_tool_loop(llm, registry(), ASK, CTX, max_calls_per_round=2)
    assert [r.error for _, r in out.calls] == [None, None] + ["too_many_tool_calls"] * 3


async def test_a_model_that_hangs_times_out(fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"tool_calls": [call("calculator", expression="1+1")]}, {"hang": True}])
    async with started(provider, fake.url, timeout_s=0.5) as llm:
        with pytest.raises(ProviderTimeout):
            await run_tool_loop(llm, registry(), ASK, CTX)


async def test_the_llm_cache_replays_tool_calls_and_keys_on_the_tools(
        fake: FakeLLMServer, provider: str) -> None:
    fake.script_tools([{"tool_calls": [call("calculator", expression="6*7")]},
                       {"content": "42."}])
    async with started(provider, fake.url) as inner:
        llm = CachedLLM(inner, TieredCache([MemoryBackend()]))
        first = await run_tool_loop(llm, registry(), ASK, CTX)
        again = await run_tool_loop(llm, registry(), ASK, CTX)
        # The same prompt without tools is another key: the fake's derived answer.
        plain = await llm.complete(ASK, temperature=0, max_tokens=50)
    assert first.text == again.text == "42."
    assert [r.data["value"] for _, r in again.calls] == [42]
    assert len(fake.tool_requests()) == 2  # the second loop never reached the server
    assert plain.text.startswith("No sources were given") and not plain.tool_calls
