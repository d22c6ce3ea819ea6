"""Running a plan as a graph: independent steps at once, each under its own timeout.

Two engines run the same step code. `langgraph` (the default, `pip install 'metis-rag[agent]'`)
compiles the plan into a LangGraph `StateGraph` - one node per step, an edge per dependency,
fan-in edges for steps that wait on several - and runs it with a recursion limit. Compiled
graphs are kept per plan *shape* (ids and dependencies), since every question of one shape
compiles to the same graph and compiling costs more than running. `asyncio` runs the same
steps as tasks that start when their dependencies are done. A failed step never stops the
plan: its dependants are skipped and the answer says what is missing.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, TypedDict

from ..errors import MissingDependency
from .figures import find_figure, shown
from .plan import REFERENCE, Plan, Step
from .tools import ToolCall, ToolCitation, ToolContext, ToolResult

StepStatus = Literal["ok", "error", "timeout", "skipped", "cancelled"]
Engine = Literal["langgraph", "asyncio"]
EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class ToolCaller(Protocol):
    """What the runner needs of a tool registry (`agent.registry.ToolRegistry` is one)."""

    async def call(self, call: ToolCall, context: ToolContext) -> ToolResult: ...


@dataclass(slots=True)
class StepRecord:
    step: Step
    status: StepStatus = "ok"
    value: Any = None
    result: ToolResult | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    citations: list[ToolCitation] = field(default_factory=list)
    error: str | None = None
    started_ms: float = 0.0  # since the plan started
    elapsed_ms: float = 0.0
    tool_ms: float = 0.0  # of elapsed_ms, time inside the tool

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _State(TypedDict):
    records: Annotated[dict[str, StepRecord], operator.or_]


async def _no_events(kind: str, data: dict[str, Any]) -> None:
    return None


class PlanRunner:
    def __init__(self, tools: ToolCaller, *, engine: Engine = "langgraph",
                 step_timeout_s: float = 20.0, plan_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._tools = tools
        self._engine = engine
        self._step_timeout_s = step_timeout_s
        self._plan_timeout_s = plan_timeout_s
        self._clock = clock
        # LangGraph is imported on the first plan: a Metis that never plans needs no extra.
        self._compiled: dict[tuple[tuple[str, tuple[str, ...]], ...], Any] = {}

    async def run(self, plan: Plan, context: ToolContext,
                  events: EventSink = _no_events) -> dict[str, StepRecord]:
        """Every step's record by id; steps still running at the plan's deadline are cancelled."""
        started = self._clock()
        records: dict[str, StepRecord] = {}
        try:
            async with asyncio.timeout(self._plan_timeout_s):
                if self._engine == "langgraph":
                    await self._run_langgraph(plan, context, events, started, records)
                else:
                    await self._run_asyncio(plan, context, events, started, records)
        except TimeoutError:
            pass
        for step in plan.steps:
            if step.id not in records:
                records[step.id] = StepRecord(step, "cancelled",
                                              error="the plan ran out of time")
        return records

    # -- engines --------------------------------------------------------------------------

    async def _run_asyncio(self, plan: Plan, context: ToolContext, events: EventSink,
                           started: float, records: dict[str, StepRecord]) -> None:
        tasks: dict[str, asyncio.Task[StepRecord]] = {}

        async def after_deps(step: Step) -> StepRecord:
            if step.after:
                await asyncio.gather(*(tasks[d] for d in step.after))
            record = await self._step(step, records, context, events, started)
            records[step.id] = record
            return record

        try:
            for wave in plan.layers():
                for step in wave:
                    tasks[step.id] = asyncio.create_task(after_deps(step))
            await asyncio.gather(*tasks.values())
        finally:
            for task in tasks.values():
                task.cancel()

    async def _run_langgraph(self, plan: Plan, context: ToolContext, events: EventSink,
                             started: float, records: dict[str, StepRecord]) -> None:
        shape = tuple((s.id, s.after) for s in plan.steps)
        graph = self._compiled.get(shape)
        if graph is None:
            graph = self._compiled[shape] = self._compile(plan)
        run = {"plan": {s.id: s for s in plan.steps}, "context": context, "events": events,
               "started": started, "records": records}
        await graph.ainvoke({"records": {}}, {"configurable": {"metis": run},
                                              "recursion_limit": len(plan.steps) + 2})

    def _compile(self, plan: Plan) -> Any:
        StateGraph, START, END = _langgraph()
        builder = StateGraph(_State)
        for step in plan.steps:
            builder.add_node(step.id, self._node(step.id))
        has_dependants = {d for s in plan.steps for d in s.after}
        for step in plan.steps:
            if not step.after:
                builder.add_edge(START, step.id)
            else:
                builder.add_edge(list(step.after) if len(step.after) > 1 else step.after[0],
                                 step.id)
            if step.id not in has_dependants:
                builder.add_edge(step.id, END)
        return builder.compile()

    def _node(self, step_id: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        # `config` unannotated: LangGraph inspects the annotation and accepts only its own type.
        async def node(state: _State, config) -> dict[str, Any]:  # type: ignore[no-untyped-def]
            run = config["configurable"]["metis"]
            records = run["records"]
            record = await self._step(run["plan"][step_id], records, run["context"],
                                      run["events"], run["started"])
            records[step_id] = record
            return {"records": {step_id: record}}

        return node

    # -- one step -------------------------------------------------------------------------

    async def _step(self, step: Step, records: Mapping[str, StepRecord], context: ToolContext,
                    events: EventSink, started: float) -> StepRecord:
        t0 = self._clock()
        record = StepRecord(step, started_ms=(t0 - started) * 1000)
        failed = [d for d in step.after if d in records and not records[d].ok]
        if failed:
            record.status, record.error = "skipped", f"needs {', '.join(failed)}, which failed"
            await events("step", {"id": step.id, "status": "skipped", "error": record.error})
            return record
        await events("step", {"id": step.id, "op": step.op, "name": step.name,
                              "status": "started", "purpose": step.purpose})
        try:
            async with asyncio.timeout(self._step_timeout_s):
                await self._perform(step, record, records, context, events)
        except TimeoutError:
            record.status, record.error = "timeout", f"no result in {self._step_timeout_s:g} s"
        record.elapsed_ms = (self._clock() - t0) * 1000
        await events("step", {"id": step.id, "status": record.status, "error": record.error,
                              "elapsed_ms": round(record.elapsed_ms, 3)})
        return record

    async def _perform(self, step: Step, record: StepRecord, records: Mapping[str, StepRecord],
                       context: ToolContext, events: EventSink) -> None:
        if step.op == "figure":
            _figure(step, record, records)
        elif step.op == "compare":
            _compare(step, record, records)
        else:
            args = substitute(step.arguments, records)
            record.arguments = args
            call = ToolCall(step.name, args, id=step.id)
            await events("tool_call", {"step": step.id, "name": step.name, "arguments": args})
            result = await self._tools.call(call, context)
            record.result, record.tool_ms = result, result.elapsed_ms
            record.citations = list(result.citations)
            if result.error:
                record.status, record.error = "error", f"{result.error}: {result.content[:300]}"
            data = result.data
            record.value = data["value"] if isinstance(data, Mapping) and "value" in data \
                else result.content
            await events("tool_result", {"step": step.id, "name": step.name,
                                         "error": result.error, "content": result.content[:2000],
                                         "cache_level": result.cache_level,
                                         "elapsed_ms": round(result.elapsed_ms, 3)})


def substitute(arguments: Mapping[str, Any], records: Mapping[str, StepRecord]) -> dict[str, Any]:
    """`{s2}` in a string argument becomes step s2's value (a figure as a plain number)."""
    def value_of(m: Any) -> str:
        value = records[m.group(1)].value
        return shown(float(value)) if isinstance(value, int | float) else str(value)

    return {k: REFERENCE.sub(value_of, v) if isinstance(v, str) else v
            for k, v in arguments.items()}


def _figure(step: Step, record: StepRecord, records: Mapping[str, StepRecord]) -> None:
    source = records[str(step.arguments["source"])]
    figure = find_figure(str(step.arguments["entity"]), source.citations)
    if figure is None:
        record.status = "error"
        record.error = f"no figure for {step.arguments['entity']!r} in the passages found"
        return
    record.value = figure.value
    record.citations = [figure.citation]
    record.arguments = {"entity": step.arguments["entity"], "line": figure.line}


def _compare(step: Step, record: StepRecord, records: Mapping[str, StepRecord]) -> None:
    figures = [records[str(f)] for f in step.arguments.get("figures", step.after)]
    pick = min if step.arguments.get("want") == "lowest" else max
    best = pick(figures, key=lambda r: float(r.value))
    record.value = str(best.step.arguments.get("entity", best.step.id))
    record.arguments = {"winner": record.value, "figure": best.value,
                        "of": {str(r.step.arguments.get("entity", r.step.id)): r.value
                               for r in figures}}
    record.citations = list(best.citations)  # the winner's figure is what the answer states


def _langgraph() -> tuple[Any, Any, Any]:
    try:
        from langgraph.graph import END, START, StateGraph
    except ImportError as exc:
        raise MissingDependency("langgraph (METIS_AGENT__ENGINE=langgraph; or set it to "
                                "asyncio)", "agent") from exc
    return StateGraph, START, END
