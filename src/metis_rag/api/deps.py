"""Named dependencies for the routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ..services import Services


def get_services(request: Request) -> Services:
    # The lifespan yields {"services": ...}; Starlette exposes it as request.state.
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
