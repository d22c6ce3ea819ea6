"""Waiting in a test for something to happen: poll its condition, never sleep a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within_s: float = 10,
    what: str = "the condition never held", every_s: float = 0.01,
) -> None:
    """Returns once `check()` (sync or async) is true; fails the test after `within_s`.
    `every_s` spaces out checks that cost something (a request each)."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} (within {within_s:g} s)"
        await asyncio.sleep(every_s)


def eventually_blocking(
    check: Callable[[], bool], *, within_s: float = 10, what: str = "the condition never held",
) -> None:
    """`eventually` for a test without an event loop (it blocks its thread between checks)."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} (within {within_s:g} s)"
        time.sleep(0.01)
