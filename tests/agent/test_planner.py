"""Query analysis and the rule planner, run as graphs over a real registry (both engines)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from metis_rag.agent.analyzer import analyse, rule_plan
from metis_rag.agent.evaluate import evaluate
from metis_rag.agent.graph import PlanRunner
from metis_rag.agent.plan import Plan, Step, check_plan, plan_from_json
from metis_rag.agent.synthesis import synthesize
from metis_rag.agent.tools import ToolContext, ToolResult, ToolSpec
from metis_rag.errors import InvalidInput
from tests.agent.passages import PassageSearch, passage_registry

CTX = ToolContext(tenant="default", collection="net")
ENGINES = ["langgraph", "asyncio"]


@pytest.mark.parametrize(("question", "kind"), [
    ("What port does ssh use?", "simple"),
    ("What is the difference between TCP and UDP?", "simple"),
    ("How do rain and snow form?", "simple"),
    ("What is the sum of the ports of ssh and http?", "arithmetic"),
    ("How much higher is the port of https than the port of http?", "arithmetic"),
    ("Which has the higher port, imaps or pop3s?", "comparison"),
    ("Which protocol number is lower, tcp or udp?", "comparison"),
    ("What is the port of smtp and what is the protocol number of udp?", "compound"),
    ("Who wrote the tutorial? What license covers it?", "compound"),
])
def test_the_analyser_sends_only_complex_questions_to_the_planner(question: str,
                                                                  kind: str) -> None:
    assert analyse(question).kind == kind


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("question", "expected", "sources"), [
    ("What is the sum of the ports of ssh and http?", ["22", "80", "102"], {"services"}),
    ("How much higher is the port of https than the port of http?", ["443 - 80 = 363"],
     {"services"}),
    ("Which has the higher port, imaps or pop3s?", ["pop3s has the highest port (995)"],
     {"services"}),
    ("Which protocol number is lower, tcp or udp?", ["tcp has the lowest protocol number (6)"],
     {"protocols"}),
    ("What is the port of smtp and what is the protocol number of udp?", ["25", "17"],
     {"services", "protocols"}),
    ("What is the total of the ports of ftp, ssh and telnet?", ["21 + 22 + 23 = 66"],
     {"services"}),
])
async def test_rule_plans_answer_with_figures_and_cite_their_sources(
    engine: str, question: str, expected: list[str], sources: set[str],
) -> None:
    plan = check_plan(rule_plan(question), ["rag_search", "calculator"])
    records = await PlanRunner(passage_registry(), engine=engine).run(plan, CTX)  # type: ignore[arg-type]
    assert all(r.ok for r in records.values()), {k: r.error for k, r in records.items()}
    draft = synthesize(plan, records)
    for text in expected:
        assert text in draft.text
    assert {c.document_id for c in draft.citations} == sources
    scores = evaluate(question, draft.text, draft.sources(),
                      [str(s.arguments["entity"]) for s in plan.steps if s.op == "figure"])
    assert scores.groundedness >= 0.6, scores.sentences


@pytest.mark.parametrize("engine", ENGINES)
async def test_independent_steps_run_at_the_same_time(engine: str) -> None:
    # Both searches must be in flight together to pass the barrier: run one after the
    # other, the first waits forever and the step times out.
    search = PassageSearch(gate=asyncio.Barrier(2))
    plan = rule_plan("What is the sum of the ports of ssh and http?")
    records = await PlanRunner(passage_registry(search), engine=engine,  # type: ignore[arg-type]
                               step_timeout_s=2).run(plan, CTX)
    assert [records[s].status for s in ("s1", "s3", "s5")] == ["ok", "ok", "ok"]
    assert records["s5"].value == 102


class Hanging:
    spec = ToolSpec(name="rag_search", description="Never answers.",
                    parameters={"type": "object", "properties": {"query": {"type": "string"}}})

    def __init__(self) -> None:
        self.cancelled = 0

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ToolResult("never")


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_step_past_its_timeout_is_cancelled_and_its_dependants_skipped(
    engine: str,
) -> None:
    from metis_rag.agent.registry import ToolRegistry

    hanging = Hanging()
    reg = ToolRegistry([hanging], cache=None, timeout_s=30)
    plan = Plan("compound", "q", (Step("s1", "tool", "rag_search", {"query": "a"}),
                                  Step("s2", "figure", "figure", {"entity": "a", "source": "s1"},
                                       after=("s1",))))
    records = await PlanRunner(reg, engine=engine, step_timeout_s=0.2).run(  # type: ignore[arg-type]
        plan, CTX)
    assert records["s1"].status == "timeout"
    assert records["s2"].status == "skipped" and "s1" in (records["s2"].error or "")
    assert hanging.cancelled == 1
    draft = synthesize(plan, records)
    assert "could not establish" in draft.text


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_plan_deadline_cancels_whatever_still_runs(engine: str) -> None:
    from metis_rag.agent.registry import ToolRegistry

    hanging = Hanging()
    reg = ToolRegistry([hanging], cache=None, timeout_s=30)
    plan = Plan("compound", "q", (Step("s1", "tool", "rag_search", {"query": "a"}),
                                  Step("s2", "tool", "rag_search", {"query": "b"})))
    records = await PlanRunner(reg, engine=engine, step_timeout_s=10,  # type: ignore[arg-type]
                               plan_timeout_s=0.2).run(plan, CTX)
    assert {r.status for r in records.values()} == {"cancelled"}
    assert hanging.cancelled == 2


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_figure_that_is_not_there_fails_its_step_not_the_plan(engine: str) -> None:
    plan = rule_plan("What is the sum of the ports of ssh and gopherx?")
    records = await PlanRunner(passage_registry(), engine=engine).run(plan, CTX)  # type: ignore[arg-type]
    assert records["s2"].ok and records["s2"].value == 22
    assert records["s4"].status == "error"
    assert records["s5"].status == "skipped"


@pytest.mark.parametrize("bad", [
    {"steps": "no"},
    {"steps": [{"id": "s1", "op": "tool", "name": "nope", "arguments": {}}]},
    {"steps": [{"id": "s1", "op": "tool", "name": "rag_search", "arguments": {"query": "{s2}"}},
               {"id": "s2", "op": "tool", "name": "rag_search", "arguments": {"query": "x"}}]},
    {"steps": [{"id": "s1", "op": "tool", "name": "rag_search", "arguments": {}, "after": ["s2"]},
               {"id": "s2", "op": "tool", "name": "rag_search", "arguments": {}, "after": ["s1"]}]},
    {"steps": [{"id": "s1", "op": "dance", "name": "x"}]},
    {"steps": [{"id": f"s{i}", "op": "tool", "name": "rag_search", "arguments": {}}
               for i in range(20)]},
])
def test_invalid_plans_are_refused_before_they_run(bad: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_plan(plan_from_json(bad, "q", "llm"), ["rag_search", "calculator"], 12)
    assert exc.value.code == "invalid_plan"


@pytest.mark.parametrize(("sentence", "supported"), [
    ("The port of ssh is 22 [1].", True),
    ("ssh uses port 22 [1].", True),
    ("The port of ssh is 23 [1].", False),  # telnet's number, two rows down
    ("The port of telnet is 22 [1].", False),  # ssh's number with a neighbour's name
    ("The port of ssh is 2222 [1].", False),
])
def test_groundedness_needs_the_name_and_its_number_on_one_row(sentence: str,
                                                                supported: bool) -> None:
    from tests.agent.passages import SERVICES

    scores = evaluate("What is the port?", sentence, {1: SERVICES})
    assert scores.sentences[0]["supported"] is supported, scores.sentences
