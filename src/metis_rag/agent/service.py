"""Agent mode end to end: analyse, plan, run the graph, synthesise, evaluate, refine, log.

`AgentService.run` answers one question and reports what it does as events (`step`,
`tool_call`, `tool_result`, then the caller's `token`, `citations`, `done`); the answer is
stored in the conversation like a fast-path answer and its process log under a query id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..config import Settings
from ..errors import InvalidInput, ProviderError
from ..llm.base import LLM
from ..schemas import AgentInfo, ChatAnswer, ChatQuery, Citation, Timings
from ..store.lookup import CollectionLookup
from ..tenancy.principal import SINGLE_TENANT, Principal
from .analyzer import Analysis, analyse, rule_plan
from .doc_focus import Profile, load_profile, narrow
from .evaluate import LLMJudge, Scores, evaluate
from .graph import EventSink, PlanRunner, StepRecord, ToolCaller
from .llm_planner import llm_plan
from .metrics import AgentMetrics
from .plan import Plan, check_plan
from .process_log import ProcessLog
from .synthesis import Draft, llm_messages, synthesize
from .tools import ToolContext, ToolSpec

Conversations = Any  # rag.conversations.ConversationLog (kept loose: no import cycle)


async def _ignore(kind: str, data: dict[str, Any]) -> None:
    return None


class AgentService:
    def __init__(self, settings: Settings, tools: ToolCaller, specs: Sequence[ToolSpec], *,
                 sessions: Any, lookup: CollectionLookup, conversations: Conversations,
                 llm: LLM | None = None, metrics: AgentMetrics | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._settings = settings
        self._agent = settings.agent
        self._specs = list(specs)
        self._tool_names = [s.name for s in specs]
        self._sessions = sessions
        self._lookup = lookup
        self._conversations = conversations
        self._llm = llm
        self._metrics = metrics
        self._clock = clock
        a = settings.agent
        self.runner = PlanRunner(tools, engine=a.engine, step_timeout_s=a.step_timeout_s,
                                 plan_timeout_s=a.plan_timeout_s, clock=clock)

    @staticmethod
    def analyse(question: str) -> Analysis:
        return analyse(question)

    async def run(self, query: ChatQuery, namespace: str | None = None,
                  who: Principal = SINGLE_TENANT, events: EventSink = _ignore) -> ChatAnswer:
        names = query.collections or [query.collection or self._settings.default_collection]
        name, also = names[0], tuple(names[1:])
        # As on the fast path: a named collection must exist in the caller's tenant (else 404);
        # only the default one is made on first use.
        if query.collection or query.collections:
            refs = [await self._lookup.get(who.tenant, n) for n in names]
        else:
            refs = [await self._lookup.get_or_create(who.tenant, name)]
        ref = refs[0]
        conversation_id = query.conversation_id
        if conversation_id and await self._conversations.collection_of(
                conversation_id, who.tenant) != ref.id:
            raise InvalidInput(f"Conversation {conversation_id} belongs to another collection.",
                               code="conversation_collection_mismatch")
        log = ProcessLog(who.tenant, name, query.message, self._clock)
        warnings: list[str] = []
        t = self._clock()
        analysis = analyse(query.message)
        log.add("analysis", output={"kind": analysis.kind, "reason": analysis.reason},
                elapsed_ms=(self._clock() - t) * 1000)
        async with self._sessions() as session:
            profile = await load_profile(session, who.tenant, [r.id for r in refs])
        plan = await self._plan(query.message, analysis, profile, log, warnings)
        await events("step", {"id": "plan", "status": "done", "plan": plan.as_dict()})
        context = ToolContext(tenant=who.tenant, collection=name,
                              namespace=who.namespace(query.namespace or namespace or ""),
                              tags=tuple(query.tags), folder=query.folder, also=also)
        records = await self._execute(plan, context, log, events)
        draft, text, mode, model = await self._compose(plan, records, log, warnings)
        scores = await self._score(query.message, plan, records, draft, text, log, warnings)
        rounds = 0
        while scores.overall < self._agent.refine_below and rounds < self._agent.max_refinements:
            rounds += 1
            plan, records, draft, text, mode, model, scores = await self._refine(
                plan, records, draft, scores, context, log, events, warnings, rounds)
        return await self._finish(query, who, ref.id, conversation_id, log, analysis, plan,
                                  records, draft, text, mode, model, scores, rounds, warnings)

    # -- planning and running ----------------------------------------------------------------

    async def _plan(self, question: str, analysis: Analysis, profile: Profile,
                    log: ProcessLog, warnings: list[str]) -> Plan:
        t = self._clock()
        if self._llm is not None and self._agent.planner in ("auto", "llm"):
            try:
                plan, tokens = await llm_plan(self._llm, question, self._specs,
                                              self._agent.max_steps, documents=profile)
                chosen = {s.id: {k: str(s.arguments[k]) for k in ("topic", "doc_type")
                                 if s.arguments.get(k)} for s in plan.steps}
                log.add("plan", name=plan.planner, tokens=tokens, cost=self._cost(tokens),
                        output={**plan.as_dict(), "documents": {
                            "by": "llm", "filters": {k: v for k, v in chosen.items() if v}}},
                        elapsed_ms=(self._clock() - t) * 1000)
                return plan
            except (InvalidInput, ProviderError) as exc:
                warnings.append(f"{exc.code}: {exc.message}; planned by rules")
                log.add("plan", name=self._llm.name, status="error",
                        output={"error": exc.code, "message": exc.message})
        plan, chosen = narrow(rule_plan(question, analysis), profile)
        plan = check_plan(plan, self._tool_names, self._agent.max_steps)
        # Why documents were picked: the analysed topic or type each search's query names.
        log.add("plan", name="rules", elapsed_ms=(self._clock() - t) * 1000,
                output={**plan.as_dict(), "documents": {"by": "rules", "filters": chosen}})
        return plan

    async def _execute(self, plan: Plan, context: ToolContext, log: ProcessLog,
                       events: EventSink) -> dict[str, StepRecord]:
        base = log.now_ms()
        records = await self.runner.run(plan, context, events)
        for step in plan.steps:
            r = records[step.id]
            output: dict[str, Any] = {"value": r.value, "error": r.error,
                                      "citations": [c.chunk_id for c in r.citations]}
            if r.result is not None:
                output["content"] = r.result.content
                if isinstance(r.result.data, dict) and "narrowed" in r.result.data:
                    output["narrowed"] = r.result.data["narrowed"]  # False: fell back to all
            log.add("tool_call" if step.op == "tool" else "step", step_id=step.id,
                    name=step.name, status=r.status, input=dict(r.arguments or step.arguments),
                    output=output, started_ms=base + r.started_ms, elapsed_ms=r.elapsed_ms,
                    cache_level=r.result.cache_level if r.result else None)
            if self._metrics:
                self._metrics.step(step.op, r.status, r.elapsed_ms, r.tool_ms)
        return records

    # -- answer, scores, refinement ----------------------------------------------------------

    async def _compose(self, plan: Plan, records: dict[str, StepRecord], log: ProcessLog,
                       warnings: list[str], drop: Sequence[str] = (),
                       ) -> tuple[Draft, str, str, str | None]:
        t = self._clock()
        draft = synthesize(plan, records, drop)
        text, mode, model, tokens = draft.text, "extractive", None, 0
        if self._llm is not None and draft.citations:
            try:
                s = self._settings.llm
                done = await self._llm.complete(llm_messages(plan, records, draft, drop),
                                                temperature=s.temperature,
                                                max_tokens=s.max_tokens)
                text, mode, model = done.text, "llm", self._llm.name
                tokens = done.prompt_tokens + done.completion_tokens
            except ProviderError as exc:
                warnings.append(f"{exc.code}: {exc.message}; answered from the steps")
        log.add("synthesis", name=model or "templates", output={"answer": text},
                elapsed_ms=(self._clock() - t) * 1000, tokens=tokens, cost=self._cost(tokens))
        return draft, text, mode, model

    async def _score(self, question: str, plan: Plan, records: dict[str, StepRecord],
                     draft: Draft, text: str, log: ProcessLog, warnings: list[str]) -> Scores:
        t = self._clock()
        entities = [str(s.arguments.get("entity")) for s in plan.steps if s.op == "figure"]
        ok = sum(1 for r in records.values() if r.ok) / max(1, len(records))
        scores = evaluate(question, text, draft.sources(), entities, ok)
        tokens = 0
        use_llm = self._agent.judge == "llm" or (self._agent.judge == "auto" and self._llm)
        if use_llm and self._llm is not None:
            try:
                scores, tokens = await LLMJudge(self._llm).evaluate(question, text,
                                                                    draft.sources(), scores)
            except ProviderError as exc:
                warnings.append(f"{exc.code}: {exc.message}; scored offline")
        log.add("evaluation", name=scores.judge, output=scores.as_dict(),
                elapsed_ms=(self._clock() - t) * 1000, tokens=tokens, cost=self._cost(tokens))
        return scores

    async def _refine(self, plan: Plan, records: dict[str, StepRecord], draft: Draft,
                      scores: Scores, context: ToolContext, log: ProcessLog, events: EventSink,
                      warnings: list[str], round_: int) -> tuple[Any, ...]:
        """Widen the searches of failed steps and run the plan again (the tool cache serves
        the steps that worked), then write the answer without the unsupported sentences."""
        failed = {s.id for s in plan.steps if not records[s.id].ok}
        retry = {str(s.arguments.get("source")): str(s.arguments.get("entity"))
                 for s in plan.steps if s.op == "figure" and s.id in failed}
        steps = tuple(
            replace(s, arguments={**s.arguments, "top_k": 20})
            if s.id in retry and s.name == "rag_search" else s for s in plan.steps)
        unsupported = [r["sentence"] for r in scores.sentences if not r["supported"]]
        log.add("refinement", name=f"round {round_}", input={"overall": scores.overall},
                output={"retried": sorted(retry), "dropped": unsupported})
        if retry:
            plan = Plan(plan.kind, plan.question, steps, plan.planner)
            records = await self._execute(plan, context, log, events)
        draft, text, mode, model = await self._compose(plan, records, log, warnings,
                                                       drop=unsupported)
        scores = await self._score(plan.question, plan, records, draft, text, log, warnings)
        return plan, records, draft, text, mode, model, scores

    async def _finish(self, query: ChatQuery, who: Principal, collection_id: int,
                      conversation_id: str | None, log: ProcessLog, analysis: Analysis,
                      plan: Plan, records: dict[str, StepRecord], draft: Draft, text: str,
                      mode: str, model: str | None, scores: Scores, rounds: int,
                      warnings: list[str]) -> ChatAnswer:
        citations = [Citation(
            index=i, document_id=c.document_id, filename=c.title, folder="", page=c.page,
            section=c.section, chunk_id=int(c.chunk_id) if c.chunk_id.isdigit() else 0,
            position=0, score=c.score, similarity=c.score, snippet=c.text[:300],
            collection=c.collection)
            for i, c in enumerate(draft.citations, start=1)]
        convs = self._conversations
        conv_id = conversation_id or convs.new_id()
        if not conversation_id:
            convs.new_conversation(conv_id, collection_id, query.message, who.tenant)
        await convs.append_turn(conv_id, query.message, text,
                                [c.model_dump() for c in citations])
        if self._settings.conversations.durable:
            await convs.committed()
        await log.save(self._sessions, analysis=analysis.kind, plan=plan.as_dict(), answer=text,
                       scores=scores.as_dict(), rounds=rounds, conversation_id=conv_id)
        total = log.now_ms()
        tokens = sum(e["tokens"] for e in log.events)
        if self._metrics:
            self._metrics.answer(plan.kind, scores, rounds, total)
        steps = [{"id": s.id, "op": s.op, "name": s.name, "status": records[s.id].status,
                  "ms": round(records[s.id].elapsed_ms, 3)} for s in plan.steps]
        return ChatAnswer(
            answer=text, citations=citations, conversation_id=conv_id,
            mode=mode,
            model=model, timings_ms=Timings(total=round(total, 3)),
            usage={"total_tokens": tokens} if tokens else {}, cost=round(self._cost(tokens), 8),
            warnings=warnings,
            agent=AgentInfo(query_id=log.id, analysis=analysis.kind, planner=plan.planner,
                            steps=steps, scores=scores.as_dict(), rounds=rounds))

    def _cost(self, tokens: int) -> float:
        return tokens / 1000 * self._settings.cache.price_per_1k_tokens

