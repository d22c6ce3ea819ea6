"""Named dependencies for the routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ..services import Services


async def get_services(request: Request) -> Services:
    # The lifespan yields {"services": ...}; Starlette exposes it as request.state. Async on
    # purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
