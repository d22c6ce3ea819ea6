"""The interface every quota counter store implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType


class CounterStore(ABC):
    """Named integer counters shared by every server that uses the same store.

    `add` is atomic: concurrent adds from any number of processes are all counted. A counter
    expires `ttl_s` after its last add; a missing or expired counter reads 0.
    """

    name = "base"

    async def start(self) -> None:  # noqa: B027 - most stores have nothing to open
        """Connect (or check the connection); called once before the first add."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; the store is not used afterwards."""

    @abstractmethod
    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        """Adds `amount` (which may be negative) and returns the counter's new value."""

    @abstractmethod
    async def get(self, key: str) -> int:
        """The counter's value, 0 when it does not exist or has expired."""

    async def __aenter__(self) -> CounterStore:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
