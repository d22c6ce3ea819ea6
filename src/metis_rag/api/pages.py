"""The pages Metis serves itself, plain files shipped in the package: the question page at / and
the performance dashboard at /dashboard."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Response

from ..errors import NotFound

router = APIRouter(include_in_schema=False)

_HTML = "text/html; charset=utf-8"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
# Package folder -> the files it ships and their media types. Only these names are served, so
# no part of a request path ever reaches the filesystem.
_FILES = {
    "web": {"index.html": _HTML, "app.js": _JS, "chat.js": _JS, "docs.js": _JS,
            "chat.css": _CSS},
    "dashboard": {"index.html": _HTML, "dashboard.js": _JS, "dashboard.css": _CSS},
}


@cache
def _read(folder: str, name: str) -> bytes:
    return (resources.files("metis_rag") / folder / name).read_bytes()


def packaged_file(folder: str, name: str) -> Response:
    media_type = _FILES[folder].get(name)
    if media_type is None:
        raise NotFound(f"No {folder} file named {name!r}.")
    return Response(_read(folder, name), media_type=media_type,
                    headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=Response)
async def chat_page() -> Response:
    return packaged_file("web", "index.html")


@router.get("/web/{name}", response_class=Response)
async def chat_asset(name: str) -> Response:
    return packaged_file("web", name)


@router.get("/dashboard", response_class=Response)
async def dashboard() -> Response:
    return packaged_file("dashboard", "index.html")


@router.get("/dashboard/{name}", response_class=Response)
async def dashboard_asset(name: str) -> Response:
    return packaged_file("dashboard", name)
