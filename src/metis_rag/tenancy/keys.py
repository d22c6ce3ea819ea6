"""API keys: made once, stored as hashes, resolved to a `Principal` in microseconds.

A key is ``mts_<id>_<secret>``: the id is public (listing, revoking, the audit log), the secret
is 32 random bytes. Keys are stored as SHA-256 hashes. A slow password hash (bcrypt, argon2)
defends guessable passwords; a 256-bit random secret cannot be guessed, so one fast hash is as
safe and keeps the check under a few microseconds on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import KeyGrant
from ..errors import NotFound
from ..ratelimit import key_id as static_key_id
from .models import ApiKey
from .principal import DEFAULT_TENANT, Principal, check_role, check_tenant

log = logging.getLogger("metis.auth")


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it is gone."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str]:
    """(id, key): the key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"mts_{key_id}_{secrets.token_urlsafe(32)}"


def static_keys(config: list[str] | Mapping[str, KeyGrant]) -> dict[str, Principal]:
    """METIS_API_KEYS by hash: a plain list is operator keys of tenant `default` (they may
    do everything, as before tenants)."""
    if isinstance(config, Mapping):
        grants = {k: (g.tenant, g.role) for k, g in config.items() if k}
    else:
        grants = {k: (DEFAULT_TENANT, "operator") for k in config if k}
    return {hash_key(k): Principal(t, check_role(r), f"env:{static_key_id(k)}", scoped=True)
            for k, (t, r) in grants.items()}


class KeyRing:
    """The keys of the configuration and of the database, in memory; reloaded every `reload_s`
    so a key made or revoked by `metis keys` (another process) takes effect within it."""

    def __init__(self, static: dict[str, Principal], reload_s: float = 2.0) -> None:
        self._static = static
        self._keys = dict(static)
        self._ever_stored = False
        self._reload_s = reload_s
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        # Once a key was stored, revoking the last one locks the server rather than opening it.
        return bool(self._static) or self._ever_stored

    def lookup(self, key: str) -> Principal | None:
        # A dict lookup on the hash: timing can at most reveal bytes of a hash, which do not
        # help find a key whose secret has 256 random bits.
        return self._keys.get(hash_key(key))

    async def start(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="metis-keyring")

    async def close(self) -> None:
        await stop(self._task)
        self._task = None

    async def reload(self) -> None:
        if self._sessions is None:
            return
        async with self._sessions() as session:
            rows = (await session.execute(
                select(ApiKey.key_hash, ApiKey.tenant, ApiKey.role, ApiKey.id)
                .where(ApiKey.revoked_at.is_(None)))).all()
            ever = rows or (await session.execute(select(ApiKey.id).limit(1))).first()
        self._ever_stored = bool(ever)
        keys = dict(self._static)
        keys.update({r[0]: Principal(r[1], check_role(r[2]), r[3], scoped=True) for r in rows})
        self._keys = keys

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._reload_s)
            try:
                await self.reload()
            except Exception:  # a database hiccup keeps the keys we have
                log.warning("reloading API keys failed; keeping the current ones", exc_info=True)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.tenant, row.role, row.name, row.created_at, row.revoked_at)


async def create_key(
    session: AsyncSession, tenant: str, role: str, name: str = ""
) -> tuple[KeyInfo, str]:
    key_id, key = new_key()
    row = ApiKey(id=key_id, key_hash=hash_key(key), tenant=check_tenant(tenant),
                 role=check_role(role), name=name[:200], created_at=datetime.now(UTC))
    session.add(row)
    await session.flush()
    return _info(row), key


async def list_keys(session: AsyncSession, tenant: str | None,
                    include_revoked: bool = False) -> list[KeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return [_info(r) for r in (await session.execute(stmt)).scalars()]


async def _active(session: AsyncSession, tenant: str | None, key_id: str) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"Key {key_id[:40]!r} does not exist.", code="key_not_found")
    return row


async def revoke_key(session: AsyncSession, tenant: str | None, key_id: str) -> KeyInfo:
    row = await _active(session, tenant, key_id)
    await session.execute(update(ApiKey).where(ApiKey.id == row.id)
                          .values(revoked_at=datetime.now(UTC)))
    await session.refresh(row)
    return _info(row)


async def rotate_key(session: AsyncSession, tenant: str | None, key_id: str) -> tuple[KeyInfo, str]:
    """A new key with the same tenant, role and name; the old one is revoked."""
    row = await _active(session, tenant, key_id)
    await revoke_key(session, tenant, key_id)
    role = check_role(row.role)
    return await create_key(session, row.tenant, role, row.name)
