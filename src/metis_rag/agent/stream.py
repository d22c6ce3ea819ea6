"""Agent mode as a stream of events, in the shape of `ChatService.stream`.

The agent runs as a task that reports its `step`, `tool_call` and `tool_result` events through
a queue; the answer then follows as `token` events, `citations` and `done`. An error raised
before the first event propagates to the caller (the route answers with its real status).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..schemas import ChatAnswer, ChatQuery
from ..tenancy.principal import Principal
from .service import AgentService

_DONE = object()


async def agent_events(agent: AgentService, query: ChatQuery, namespace: str | None,
                       who: Principal) -> AsyncIterator[tuple[str, Any]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def sink(kind: str, data: dict[str, Any]) -> None:
        queue.put_nowait((kind, data))

    async def work() -> ChatAnswer:
        try:
            return await agent.run(query, namespace, who, sink)
        finally:
            queue.put_nowait(_DONE)

    task = asyncio.create_task(work())
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
        answer = task.result()  # raises what the run raised
        for piece in _pieces(answer.answer):
            yield "token", piece
        yield "citations", [c.model_dump() for c in answer.citations]
        yield "done", answer
    finally:
        if not task.done():  # the client left: stop the plan's steps too
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]
