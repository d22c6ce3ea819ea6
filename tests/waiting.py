"""Waiting in a test for something to happen: poll its condition, never sleep a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within_s: float = 10,
    what: str = "the condition never held",
) -> None:
    """Returns once `check()` (sync or async) is true; fails the test after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} (within {within_s:g} s)"
        await asyncio.sleep(0.01)
