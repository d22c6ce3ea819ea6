"""Tool calls on the wire: the OpenAI (`tool_calls[].function.arguments` as a JSON string) and
Ollama (`message.tool_calls[].function.arguments` as an object) shapes, both ways.

A call whose name or arguments cannot be used is kept, with `malformed` saying why, so the
tool loop can tell the model instead of failing the whole answer; a `tool_calls` that is not
a list at all is a malformed response (ProviderError).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ProviderError
from .base import ChatMessage, FunctionCall

MAX_ARGUMENT_CHARS = 100_000


def openai_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.name, "arguments": json.dumps(dict(c.arguments))}} for c in m.tool_calls]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


def ollama_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [{"function": {"name": c.name, "arguments": dict(c.arguments)}}
                             for c in m.tool_calls]
    if m.role == "tool" and m.name:
        out["tool_name"] = m.name
    return out


def from_openai(raw: Any) -> list[FunctionCall]:
    return [_call(item, i, arguments_as_text=True) for i, item in enumerate(_list(raw))]


def from_ollama(raw: Any) -> list[FunctionCall]:
    return [_call(item, i, arguments_as_text=False) for i, item in enumerate(_list(raw))]


def _list(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProviderError("the model's tool_calls is not a list")
    return raw


def _call(item: Any, index: int, *, arguments_as_text: bool) -> FunctionCall:
    call_id = f"call_{index}"
    if not isinstance(item, dict):
        return FunctionCall(call_id, "", {}, malformed="the tool call is not an object")
    if isinstance(item.get("id"), str) and item["id"]:
        call_id = item["id"][:100]
    function = item.get("function")
    if not isinstance(function, dict):
        return FunctionCall(call_id, "", {}, malformed="the tool call names no function")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        return FunctionCall(call_id, "", {}, malformed="the tool call names no function")
    name = name.strip()[:100]
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI always; some Ollama models too
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return FunctionCall(call_id, name, {}, malformed="the arguments are too long")
        if not arguments.strip() and not arguments_as_text:
            arguments = "{}"
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            return FunctionCall(call_id, name, {}, malformed="the arguments are not valid JSON")
    if not isinstance(arguments, dict):
        return FunctionCall(call_id, name, {}, malformed="the arguments are not a JSON object")
    return FunctionCall(call_id, name, arguments)
