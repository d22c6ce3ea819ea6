"""`run_tool_loop`: let an LLM call tools, feed it the results, until it answers in text.

Bounded: at most `max_rounds` rounds of tool calls and `max_calls_per_round` calls in a round
(the rest are answered with an error, since OpenAI wants an answer for every call id); after
the last round the model is asked once more without tools, so a model stuck calling tools
still ends with an answer. Malformed calls, unknown tools and failing tools are answered with
an error message the model can read; provider errors (timeouts included) are raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..llm.base import LLM, ChatMessage, Completion, FunctionCall
from .registry import ToolRegistry
from .tools import ToolCall, ToolCitation, ToolContext, ToolResult

FINAL_NUDGE = ("You have used all the tool calls you may make. Answer now from the tool "
               "results above, without calling tools.")


@dataclass
class ToolLoopResult:
    text: str
    messages: list[ChatMessage]
    calls: list[tuple[ToolCall, ToolResult]] = field(default_factory=list)
    rounds: int = 0
    # "answered": the model answered in text; "max_rounds": it was cut off and nudged.
    stopped: str = "answered"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def citations(self) -> list[ToolCitation]:
        return [c for _, result in self.calls for c in result.citations]


async def run_tool_loop(
    llm: LLM, registry: ToolRegistry, messages: Sequence[ChatMessage], context: ToolContext,
    max_rounds: int = 4, *, temperature: float = 0.0, max_tokens: int = 512,
    max_calls_per_round: int = 8,
) -> ToolLoopResult:
    history = list(messages)
    out = ToolLoopResult(text="", messages=history)
    declarations = registry.declarations()
    for _ in range(max_rounds):
        done = await llm.complete(history, temperature=temperature, max_tokens=max_tokens,
                                  tools=declarations)
        _count(out, done)
        if not done.tool_calls:
            out.text = done.text
            return out
        out.rounds += 1
        history.append(ChatMessage("assistant", done.text, tool_calls=tuple(done.tool_calls)))
        results = await asyncio.gather(*(
            _answer(registry, call, context, over_limit=i >= max_calls_per_round)
            for i, call in enumerate(done.tool_calls)))
        for call, (tool_call, result) in zip(done.tool_calls, results, strict=True):
            out.calls.append((tool_call, result))
            history.append(ChatMessage("tool", _for_model(result), tool_call_id=call.id,
                                       name=call.name))
    history.append(ChatMessage("user", FINAL_NUDGE))
    done = await llm.complete(history, temperature=temperature, max_tokens=max_tokens)
    _count(out, done)
    out.text, out.stopped = done.text, "max_rounds"
    return out


async def _answer(registry: ToolRegistry, call: FunctionCall, context: ToolContext, *,
                  over_limit: bool) -> tuple[ToolCall, ToolResult]:
    tool_call = ToolCall(call.name, call.arguments, call.id)
    if call.malformed is not None:
        return tool_call, ToolResult(f"Malformed tool call: {call.malformed}.",
                                     error="malformed_tool_call")
    if over_limit:
        return tool_call, ToolResult("Too many tool calls in one turn; this one was not run.",
                                     error="too_many_tool_calls")
    return tool_call, await registry.call(tool_call, context)


def _for_model(result: ToolResult) -> str:
    return f"Error ({result.error}): {result.content}" if result.error else result.content


def _count(out: ToolLoopResult, done: Completion) -> None:
    out.prompt_tokens += done.prompt_tokens
    out.completion_tokens += done.completion_tokens
