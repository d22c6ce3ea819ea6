"""A plan: the steps that answer a complex question, and what each step waits for.

A step either calls a tool of the registry (`op="tool"`) or derives a value from earlier steps
without any I/O (`op="figure"`: the number a passage gives for an entity; `op="compare"`: which
of several figures is largest or smallest). Tool arguments may name an earlier step's value as
`{s1}`: the executor substitutes it when that step is done, which is why a step that uses one
must list it in `after`. Plans are checked before they run: known steps, no cycles, bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidInput

StepOp = Literal["tool", "figure", "compare"]
PlanKind = Literal["simple", "compound", "comparison", "arithmetic", "multi_hop"]
REFERENCE = re.compile(r"\{(s\d{1,3})\}")
MAX_STEPS = 16


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    op: StepOp
    # The tool's name for op="tool"; a short label otherwise.
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    # What this step contributes to the answer, in words ("the port of ssh").
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    question: str
    steps: tuple[Step, ...]
    # Who made it: "rules" or the LLM's name.
    planner: str = "rules"

    def layers(self) -> list[list[Step]]:
        """The steps in waves: every step of a wave depends only on earlier waves."""
        done: set[str] = set()
        left = list(self.steps)
        waves: list[list[Step]] = []
        while left:
            wave = [s for s in left if set(s.after) <= done]
            if not wave:
                raise InvalidInput("The plan's steps wait on each other in a cycle.",
                                   code="invalid_plan")
            waves.append(wave)
            done |= {s.id for s in wave}
            left = [s for s in left if s.id not in done]
        return waves

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "planner": self.planner, "steps": [
            {"id": s.id, "op": s.op, "name": s.name, "arguments": dict(s.arguments),
             "after": list(s.after), "purpose": s.purpose} for s in self.steps]}


def check_plan(plan: Plan, tools: Sequence[str], max_steps: int = MAX_STEPS) -> Plan:
    """Raise `InvalidInput(code="invalid_plan")` unless the plan can run as it is."""
    if not plan.steps:
        raise InvalidInput("The plan has no steps.", code="invalid_plan")
    if len(plan.steps) > max_steps:
        raise InvalidInput(f"The plan has {len(plan.steps)} steps; at most {max_steps} run.",
                           code="invalid_plan")
    ids = [s.id for s in plan.steps]
    if len(set(ids)) != len(ids):
        raise InvalidInput("Two steps of the plan share an id.", code="invalid_plan")
    known = set(ids)
    for step in plan.steps:
        if step.op == "tool" and step.name not in tools:
            raise InvalidInput(f"Step {step.id} calls {step.name[:60]!r}, which is no tool.",
                               code="invalid_plan")
        missing = set(step.after) - known
        if missing or step.id in step.after:
            raise InvalidInput(f"Step {step.id} waits on an unknown step.", code="invalid_plan")
        used = set(REFERENCE.findall(repr(dict(step.arguments))))
        if not used <= set(step.after):
            raise InvalidInput(f"Step {step.id} uses a step it does not wait for.",
                               code="invalid_plan")
    plan.layers()  # raises on a cycle
    return plan


def plan_from_json(value: Any, question: str, planner: str) -> Plan:
    """A plan from an LLM's structured output: {"kind": ..., "steps": [{id, op, name, ...}]}."""
    if not isinstance(value, Mapping) or not isinstance(value.get("steps"), list):
        raise InvalidInput("The planner's answer has no list of steps.", code="invalid_plan")
    kind = value.get("kind", "multi_hop")
    if kind not in ("compound", "comparison", "arithmetic", "multi_hop"):
        kind = "multi_hop"
    steps: list[Step] = []
    for raw in value["steps"]:
        if not isinstance(raw, Mapping):
            raise InvalidInput("A step of the plan is not an object.", code="invalid_plan")
        op = raw.get("op", "tool")
        if op not in ("tool", "figure", "compare"):
            raise InvalidInput(f"Unknown step operation {str(op)[:40]!r}.", code="invalid_plan")
        args = raw.get("arguments") or {}
        after = raw.get("after") or []
        if not isinstance(args, Mapping) or not isinstance(after, list):
            raise InvalidInput("A step's arguments or dependencies are malformed.",
                               code="invalid_plan")
        steps.append(Step(id=str(raw.get("id", f"s{len(steps) + 1}")), op=op,
                          name=str(raw.get("name", "")), arguments=dict(args),
                          after=tuple(str(a) for a in after),
                          purpose=str(raw.get("purpose", ""))[:300]))
    return Plan(kind=kind, question=question, steps=tuple(steps), planner=planner)
