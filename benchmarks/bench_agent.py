"""Agent mode: planner accuracy, groundedness AUC, agent overhead, parallelism, analyser cost.

    apt-get install netbase manpages   # /etc/services, /etc/protocols, signal(7), tcp(7)
    python benchmarks/bench_agent.py [--split test|dev|all] [--runs 3]

1. Rule planner accuracy, per question set, asked in agent mode (rule planner, no LLM)
   through the real tool registry (`build_registry`: Metis retrieval as rag_search, the
   calculator): `netbase` (data/agent/questions.jsonl over services.txt and protocols.txt,
   tables of names and numbers) and `manpages` (data/agent/questions_man.jsonl over the
   rendered signal(7) and tcp(7) pages: prose with a table of signal numbers, and sysctl
   entries such as "tcp_fin_timeout (integer; default: 60; ...)"). Correct = every figure of
   the question is stated right, cites a passage of the right file with a line that starts
   with the entity and gives the figure as its first number, and the result (sum,
   difference, winner) is in the answer.
2. Groundedness ROC AUC of the offline evaluator on data/agent/grounding.jsonl.
3. Agent overhead per step, excluding tool time: a plan's wall time minus its tools' critical
   path, over steps, on tools that answer at once (langgraph and asyncio engines).
4. Parallel steps: wall time of N independent 50 ms steps vs the longest step.
5. The analyser's cost on simple questions, against the fast path's own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import harness

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "agent"

def _netbase() -> dict[str, bytes]:
    return {"services.txt": Path("/etc/services").read_bytes(),
            "protocols.txt": Path("/etc/protocols").read_bytes()}


def _manpages() -> dict[str, bytes]:
    from analysis_data import render_man

    pages = {"signal.txt": "signal.7", "tcp.txt": "tcp.7"}
    out = {name: (render_man(page) or "").encode() for name, page in pages.items()}
    missing = [name for name, text in out.items() if not text]
    if missing:
        raise SystemExit(f"man pages missing ({missing}): apt-get install manpages man-db")
    return out


SETS = {"netbase": ("questions.jsonl", _netbase), "manpages": ("questions_man.jsonl", _manpages)}


def _load(name: str, split: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]
    return [r for r in rows if split == "all" or r["split"] == split]


def _link_models(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    cached = os.environ.get("METIS_TEST_CACHE")
    target = Path(cached) / "models" if cached else harness.prepared_models()
    (data_dir / "models").symlink_to(target, target_is_directory=True)


async def planner_accuracy(questions: list[dict[str, Any]], engine: str,
                           docs: Mapping[str, bytes], fast_path: bool = True) -> dict[str, Any]:
    from metis_rag.config import AgentSettings, CacheSettings, Settings
    from metis_rag.ingest.pipeline import Upload
    from metis_rag.schemas import ChatQuery
    from metis_rag.services import open_services
    from metis_rag.store import repo

    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    _link_models(work / "data")
    settings = Settings(data_dir=work / "data", cache=CacheSettings(backend="memory"),
                        agent=AgentSettings(engine=engine))  # type: ignore[arg-type]
    correct, failures, times = 0, [], []
    async with open_services(settings) as services:
        await services.ingestor.ingest(
            [Upload(name, data) for name, data in docs.items()], "net")
        assert services.agent is not None
        for q in questions:
            t = time.perf_counter()
            answer = await services.agent.run(ChatQuery(message=q["question"], collection="net",
                                                        mode="agent"))
            times.append((time.perf_counter() - t) * 1000)
            async with services.sessions() as session:
                chunks = await repo.chunks_by_ids(session, [c.chunk_id for c in answer.citations])
            ok, why = _grade(q, answer, {i: chunks[c.chunk_id].text for i, c in
                                         enumerate(answer.citations, 1) if c.chunk_id in chunks})
            correct += ok
            if not ok:
                failures.append({"id": q["id"], "question": q["question"], "why": why,
                                 "answer": answer.answer})
        fast = []  # the fast path's own latency, for the analyser's share of it
        simple = [f"Which port does {e} use?" for q in questions for e, _, _ in q["figures"]
                  if fast_path]
        for message in simple:
            t = time.perf_counter()
            await services.chat.answer(ChatQuery(message=message, collection="net", cache=False))
            fast.append((time.perf_counter() - t) * 1000)
    return {"questions": len(questions), "correct": correct,
            "accuracy": round(correct / len(questions), 4), "failures": failures,
            "p50_ms": round(harness.median(times), 1),
            "p95_ms": round(harness.percentile(times, 0.95), 1),
            "fast_path_p95_ms": round(harness.percentile(fast, 0.95), 2) if fast else None}


def _grade(q: Mapping[str, Any], answer: Any, texts: dict[int, str]) -> tuple[bool, str]:
    files = {c.index: c.filename for c in answer.citations}
    for entity, value, filename in q["figures"]:
        m = re.search(r"of " + re.escape(entity) + r" is (\S+) \[(\d+)\]", answer.answer)
        if m is None or m.group(1) != str(value):
            return False, f"{entity}: no figure {value} stated"
        n = int(m.group(2))
        if files.get(n) != filename:
            return False, f"{entity}: cites {files.get(n)}, not {filename}"
        # A line that starts with the entity and whose first number is the figure: "ssh 22/tcp",
        # "SIGKILL  9  9  9  9", "tcp_fin_timeout (integer; default: 60; since Linux 2.2)".
        row = re.compile(r"^\s*" + re.escape(entity) + r"(?![\w-])[^\d\n]*(?<![\w.])"
                         + str(value) + r"(?![\d.])", re.M)
        if not row.search(texts.get(n, "")):
            return False, f"{entity}: the cited passage has no row '{entity} {value}'"
    expected = str(q["answer"])
    if expected and not re.search(r"(?<![\w-])" + re.escape(expected) + r"(?![\w-])",
                                  answer.answer.split(". ")[-1] if q["kind"] != "comparison"
                                  else answer.answer):
        return False, f"result {expected} missing"
    return True, ""


def groundedness_auc(items: list[dict[str, Any]]) -> dict[str, Any]:
    from metis_rag.agent.evaluate import sentence_support

    scored = [(sentence_support(i["sentence"], [i["source"]], i["question"]), i["label"])
              for i in items]
    pos = [s for s, label in scored if label == 1]
    neg = [s for s, label in scored if label == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return {"sentences": len(items), "supported": len(pos), "unsupported": len(neg),
            "roc_auc": round(wins / (len(pos) * len(neg)), 4)}


class _Instant:
    """A tool that answers at once with a figure-bearing passage (measures the agent only)."""

    def __init__(self, name: str, delay_s: float = 0.0) -> None:
        from metis_rag.agent.tools import ToolSpec

        self.spec = ToolSpec(name=name, description=name, parameters={
            "type": "object", "properties": {"query": {"type": "string"},
                                             "expression": {"type": "string"}}})
        self.delay_s = delay_s

    async def run(self, arguments: Mapping[str, Any], context: Any) -> Any:
        from metis_rag.agent.tools import ToolCitation, ToolResult

        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if "expression" in arguments:
            return ToolResult("x", data={"value": 1.0})
        entity = str(arguments["query"]).split()[0]
        return ToolResult("x", citations=[ToolCitation("d", "t", "1", f"{entity}\t42/tcp", 1.0)])


async def overhead(engine: str, repeats: int) -> dict[str, Any]:
    from metis_rag.agent.analyzer import rule_plan
    from metis_rag.agent.evaluate import evaluate
    from metis_rag.agent.graph import PlanRunner
    from metis_rag.agent.registry import ToolRegistry
    from metis_rag.agent.synthesis import synthesize
    from metis_rag.agent.tools import ToolContext

    registry = ToolRegistry([_Instant("rag_search"), _Instant("calculator")], cache=None)
    runner = PlanRunner(registry, engine=engine)  # type: ignore[arg-type]
    ctx = ToolContext(tenant="t", collection="c")
    question = "What is the total of the ports of ftp, ssh and telnet?"
    per_step: list[float] = []
    for i in range(repeats + 20):
        t = time.perf_counter()
        plan = rule_plan(question)
        records = await runner.run(plan, ctx)
        draft = synthesize(plan, records)
        evaluate(question, draft.text, draft.sources(), ["ftp", "ssh", "telnet"])
        wall = (time.perf_counter() - t) * 1000
        # The critical path's tool time: a search, then the calculator.
        tools = max(records[s].tool_ms for s in ("s1", "s3", "s5")) + records["s7"].tool_ms
        if i >= 20:  # warm-up: the first plan of a shape compiles its graph
            per_step.append((wall - tools) / len(plan.steps))
    return {"engine": engine, "steps": 7, "p50_ms": round(harness.median(per_step), 4),
            "p95_ms": round(harness.percentile(per_step, 0.95), 4)}


async def parallel(engine: str, width: int, step_s: float, repeats: int) -> dict[str, Any]:
    from metis_rag.agent.graph import PlanRunner
    from metis_rag.agent.plan import Plan, Step
    from metis_rag.agent.registry import ToolRegistry
    from metis_rag.agent.tools import ToolContext

    registry = ToolRegistry([_Instant("rag_search", step_s)], cache=None)
    runner = PlanRunner(registry, engine=engine)  # type: ignore[arg-type]
    plan = Plan("compound", "q", tuple(Step(f"s{i}", "tool", "rag_search", {"query": f"e{i} x"})
                                       for i in range(1, width + 1)))
    ratios = []
    for _ in range(repeats):
        t = time.perf_counter()
        records = await runner.run(plan, ToolContext(tenant="t", collection="c"))
        wall = time.perf_counter() - t
        ratios.append(wall / (max(r.elapsed_ms for r in records.values()) / 1000))
    return {"engine": engine, "steps": width, "step_ms": step_s * 1000,
            "wall_over_longest_p50": round(harness.median(ratios), 4),
            "wall_over_longest_max": round(max(ratios), 4)}


def analyser_cost(repeats: int) -> dict[str, Any]:
    from metis_rag.agent.analyzer import analyse

    simple = [q for topic in harness.questions(40) for q in topic][:200]
    times = []
    for _ in range(repeats):
        for q in simple:
            t = time.perf_counter_ns()
            analyse(q)
            times.append((time.perf_counter_ns() - t) / 1000)
    flagged = sum(1 for q in simple if not analyse(q).simple)
    return {"questions": len(simple), "flagged_complex": flagged,
            "p50_us": round(harness.median(times), 2),
            "p95_us": round(harness.percentile(times, 0.95), 2)}


async def main(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"split": a.split}
    out["groundedness"] = groundedness_auc(_load("grounding.jsonl", a.split))
    out["analyser"] = analyser_cost(a.runs * 20)
    for engine in ("langgraph", "asyncio"):
        out[f"overhead_{engine}"] = await overhead(engine, a.runs * 200)
        out[f"parallel_{engine}"] = await parallel(engine, 4, 0.05, a.runs * 10)
    for name in a.sets:
        questions, documents = SETS[name]
        out[f"planner_{name}"] = await planner_accuracy(
            _load(questions, a.split), "langgraph", documents(), fast_path=name == "netbase")
    if "netbase" in a.sets:
        share = out["analyser"]["p95_us"] / 1000 / out["planner_netbase"]["fast_path_p95_ms"]
        out["analyser"]["share_of_fast_path_p95"] = round(share, 6)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--split", choices=("dev", "test", "all"), default="test")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sets", nargs="+", choices=tuple(SETS), default=list(SETS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(0)
