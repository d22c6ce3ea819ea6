"""Shared fixtures: a prepared embedding model reused by every test, settings on a temp dir,
and an HTTP client on the real app (lifespan included)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from metis_rag.app import create_app
from metis_rag.config import EmbedSettings, Settings

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path(os.environ.get("METIS_TEST_CACHE", REPO / ".pytest_cache" / "metis-models"))


@pytest.fixture(scope="session")
def prepared_models() -> Path:
    """A data dir whose models/ holds the prepared ONNX model, exported once per machine."""
    from metis_rag.embed import build_embedder

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)

    async def prepare() -> None:
        embedder = build_embedder(EmbedSettings(), MODEL_CACHE)
        await embedder.start()
        await embedder.close()

    asyncio.run(prepare())
    return MODEL_CACHE / "models"


@pytest.fixture
def make_settings(tmp_path: Path, prepared_models: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        data_dir = Path(overrides.pop("data_dir", tmp_path / "data"))  # type: ignore[arg-type]
        data_dir.mkdir(parents=True, exist_ok=True)
        link = data_dir / "models"
        if not link.exists():
            link.symlink_to(prepared_models, target_is_directory=True)
        return Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis") as c:
            yield c
