"""The LLM planner: the model writes the plan as structured JSON, which is checked like any plan.

An invalid or unparsable plan is not retried against the model: the caller falls back to the
rule-based plan, so a bad planner costs one call, never the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from ..errors import InvalidInput
from ..llm.base import LLM, ChatMessage
from .doc_focus import Profile
from .evaluate import json_part
from .plan import Plan, check_plan, plan_from_json
from .tools import ToolSpec

PROMPT = """You plan how to answer a question with tools. Reply with JSON only:
{"kind": "compound|comparison|arithmetic|multi_hop", "steps": [
  {"id": "s1", "op": "tool", "name": "<tool>", "arguments": {...}, "after": [], "purpose": "..."},
  {"id": "s2", "op": "figure", "name": "figure", "arguments": {"entity": "<name>",
   "source": "s1", "metric": "<what number>"}, "after": ["s1"]},
  {"id": "s3", "op": "compare", "name": "compare", "arguments": {"figures": ["s2", "s4"],
   "want": "highest|lowest", "metric": "..."}, "after": ["s2", "s4"]}]}
A step may use an earlier step's value in a string argument as {s2}; it must then list s2 in
"after". Steps without dependencies between them run at the same time. Use at most %d steps.
Tools:
%s
The collection's documents, by analysed topic and type (number of documents each); give
rag_search a "topic" or "doc_type" argument to search only those documents:
%s"""


async def llm_plan(llm: LLM, question: str, specs: Sequence[ToolSpec], max_steps: int,
                   documents: Profile | None = None) -> tuple[Plan, int]:
    """(the plan, tokens spent); raises `InvalidInput(code="invalid_plan")` on a bad plan."""
    tools = "\n".join(f"- {s.name}: {s.description} arguments: "
                      f"{orjson.dumps(dict(s.parameters)).decode()}" for s in specs)
    # The tools are also declared the protocol's way: a model may answer by calling them.
    prompt = PROMPT % (max_steps, tools, (documents or Profile()).describe())
    done = await llm.complete([ChatMessage("system", prompt),
                               ChatMessage("user", question)], temperature=0.0, max_tokens=800,
                              tools=[s.as_openai() for s in specs])
    tokens = done.prompt_tokens + done.completion_tokens
    if done.tool_calls:  # the model called tools at once: one wave of independent steps
        bad = next((c for c in done.tool_calls if c.malformed), None)
        if bad is not None:
            raise InvalidInput(f"The planner's tool call is malformed: {bad.malformed}",
                               code="invalid_plan")
        raw: object = {"kind": "compound", "steps": [
            {"id": f"s{i}", "op": "tool", "name": c.name, "arguments": dict(c.arguments)}
            for i, c in enumerate(done.tool_calls, start=1)]}
        plan = plan_from_json(raw, question, planner=llm.name)
        return check_plan(plan, [s.name for s in specs], max_steps), tokens
    try:
        raw = orjson.loads(json_part(done.text))
    except orjson.JSONDecodeError:
        raise InvalidInput("The planner's answer is not JSON.", code="invalid_plan") from None
    plan = plan_from_json(raw, question, planner=llm.name)
    return check_plan(plan, [s.name for s in specs], max_steps), tokens
