"""The admission limit: past `max_in_flight` requests at once, 503 overloaded with Retry-After
at once; health checks always pass; a freed slot admits the next request."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from metis_rag.api.admission import AdmissionLimit
from metis_rag.app import create_app
from metis_rag.config import RateLimitSettings, Settings
from tests.waiting import eventually


def held_app(release: asyncio.Event, entered: asyncio.Queue[str]) -> AdmissionLimit:
    async def slow(request: Request) -> JSONResponse:
        await entered.put(request.url.path)
        await release.wait()
        return JSONResponse({"ok": True})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    inner = Starlette(routes=[Route("/api/chat/query", slow, methods=["POST"]),
                              Route("/api/health", health)])
    return AdmissionLimit(inner, max_in_flight=2)


async def test_requests_past_the_limit_are_refused_at_once_and_health_still_answers() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    app = held_app(release, entered)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://metis") as client:
        held = [asyncio.create_task(client.post("/api/chat/query")) for _ in range(2)]
        for _ in held:
            await asyncio.wait_for(entered.get(), 5)
        refused = await asyncio.wait_for(client.post("/api/chat/query"), 5)
        assert refused.status_code == 503
        assert refused.json()["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/api/health")).status_code == 200
        assert app.refused == 1 and app.in_flight == 2
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert app.in_flight == 0
        assert (await client.post("/api/chat/query")).status_code == 200


def test_the_setting_puts_the_limit_in_front_of_the_routes_and_zero_leaves_it_out() -> None:
    def middleware(limit: int) -> list[type]:
        app = create_app(Settings(ratelimit=RateLimitSettings(max_in_flight=limit)))
        return [m.cls for m in app.user_middleware]  # type: ignore[misc]

    assert AdmissionLimit in middleware(64)
    assert AdmissionLimit not in middleware(0)
    lag = create_app(Settings(ratelimit=RateLimitSettings(max_loop_lag_ms=50)))
    assert AdmissionLimit in [m.cls for m in lag.user_middleware]  # type: ignore[misc]


async def test_a_late_event_loop_refuses_new_requests_until_it_catches_up() -> None:
    import time

    from tests.lifespan import lifespan

    async def answer(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/api/chat/query", answer, methods=["POST"]),
                              Route("/api/health", answer)])
    app = AdmissionLimit(inner, max_loop_lag_ms=100)
    async with lifespan(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://metis") as client:
        assert (await client.post("/api/chat/query")).status_code == 200
        time.sleep(0.3)  # the loop is held: the sampler's next tick is ~295 ms late
        # Let the late tick run, and only it: a timer due long ago goes before one due in
        # 1 ms, and the tick after it (5 ms on) would find the loop on time again.
        await asyncio.sleep(0.001)
        refused = await client.post("/api/chat/query")
        assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/api/health")).status_code == 200
        await eventually(lambda: app.loop_lag_s <= 0.1, what="the loop never caught up")
        assert (await client.post("/api/chat/query")).status_code == 200
        assert app.refused == 1
    assert app._timer is not None and app._timer.cancelled()
