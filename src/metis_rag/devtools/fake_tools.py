"""Scripted tool calling for the fake LLM server, in the OpenAI and the Ollama shapes.

A script is a list of turns, each answering one chat request that declares `tools`:

- ``{"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]}``: the model
  calls tools (ids are made up when not given);
- ``{"raw_tool_calls": <any JSON>}``: put verbatim where the protocol's tool calls go, for
  malformed calls (a string of broken JSON as OpenAI arguments, a call with no name...);
- ``{"content": "text"}``: a final text answer;
- ``{"hang": true}``: accept the request and never answer (a timeout);
- add ``"repeat": true`` to a turn to answer with it forever (a model stuck in a tool loop).

When the script is empty a request with tools gets the usual derived answer. Every request
with tools is recorded (its messages and tool names) for tests to inspect.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any


class ToolScript:
    def __init__(self) -> None:
        self.turns: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []

    def load(self, turns: Sequence[Mapping[str, Any]]) -> None:
        for turn in turns:
            if not isinstance(turn, Mapping) or not ({"tool_calls", "raw_tool_calls", "content",
                                                      "hang"} & set(turn)):
                raise ValueError("each turn needs tool_calls, raw_tool_calls, content or hang")
        self.turns = deque(dict(t) for t in turns)
        self.requests = []

    def next_turn(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The scripted answer to a request that declares tools (None: answer as usual)."""
        tools = body.get("tools") or []
        self.requests.append({
            "messages": body.get("messages") or [],
            "tools": [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)],
        })
        if not self.turns:
            return None
        turn = self.turns[0]
        if not turn.get("repeat"):
            self.turns.popleft()
        return turn

    def state(self) -> dict[str, Any]:
        return {"remaining": len(self.turns), "requests": self.requests}


def openai_tool_calls(turn: Mapping[str, Any]) -> Any:
    if "raw_tool_calls" in turn:
        return turn["raw_tool_calls"]
    return [{"id": c.get("id") or f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
            for i, c in enumerate(turn.get("tool_calls") or [])]


def ollama_tool_calls(turn: Mapping[str, Any]) -> Any:
    if "raw_tool_calls" in turn:
        return turn["raw_tool_calls"]
    return [{"function": {"name": c["name"], "arguments": c.get("arguments", {})}}
            for c in turn.get("tool_calls") or []]


def openai_body(turn: Mapping[str, Any], model: str, ids: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.get("content")}
    finish = "stop"
    if "tool_calls" in turn or "raw_tool_calls" in turn:
        message["tool_calls"] = openai_tool_calls(turn)
        finish = "tool_calls"
    return {"id": f"chatcmpl-fake{ids}", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def ollama_body(turn: Mapping[str, Any], model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.get("content") or ""}
    if "tool_calls" in turn or "raw_tool_calls" in turn:
        message["tool_calls"] = ollama_tool_calls(turn)
    return {"model": model, "message": message, "done": True, "done_reason": "stop",
            "prompt_eval_count": 1, "eval_count": 1}
