"""HTTP plumbing shared by the remote LLM and embedding backends: client, errors, streaming."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from ..errors import ProviderError, ProviderTimeout
from .base import Completion


def make_client(
    base_url: str, *, timeout_s: float, connect_timeout_s: float, api_key: str = ""
) -> httpx.AsyncClient:
    """A pooled client; `timeout_s` also bounds each read, so a silent stream cannot stall."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        # Calls beyond 100 at once wait here for a free connection, within their timeout.
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )


def openai_base_url(url: str) -> str:
    """``http://host:port`` becomes ``http://host:port/v1``; a URL with a path is kept as given."""
    url = (url or "https://api.openai.com/v1").rstrip("/")
    return url if urlsplit(url).path not in ("", "/") else url + "/v1"


def require_client(client: httpx.AsyncClient | None, name: str) -> httpx.AsyncClient:
    if client is None:
        raise RuntimeError(f"{name} is not started; call start() first")
    return client


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or a date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_error(name: str, response: httpx.Response) -> ProviderError:
    """The error for a response with status >= 400 whose body has been read."""
    detail = response.text[:200]
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            detail = error
    return ProviderError(
        f"{name} answered HTTP {response.status_code}: {detail}",
        upstream_status=response.status_code,
        retry_after_s=parse_retry_after(response.headers),
    )


def malformed(name: str, what: str) -> ProviderError:
    return ProviderError(f"{name} sent a malformed response: {what}")


def decode_json(name: str, content: bytes | str) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise malformed(name, f"not JSON ({str(content)[:80]!r})") from exc


@contextmanager
def provider_errors(name: str, timeout_s: float) -> Iterator[None]:
    """Turns transport failures and `asyncio.timeout` expiry into `ProviderError`s."""
    try:
        yield
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderTimeout(f"{name} did not answer within {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(f"{name} is unreachable: {type(exc).__name__}: {exc}") from exc


async def post_json(
    client: httpx.AsyncClient, name: str, path: str, payload: Any, timeout_s: float
) -> Any:
    """POSTs `payload` and returns the decoded JSON reply; every failure is a `ProviderError`."""
    with provider_errors(name, timeout_s):
        async with asyncio.timeout(timeout_s):
            response = await client.post(path, json=payload)
    if response.status_code >= 400:
        raise status_error(name, response)
    return decode_json(name, response.content)


def unit_rows(name: str, rows: Any, n: int, dim: int) -> np.ndarray:
    """`n` embedding rows as a float32 array with L2-normalised rows; `dim` 0 accepts any width."""
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise malformed(name, "embeddings are not a numeric matrix") from exc
    if array.ndim != 2 or array.shape[0] != n or (dim and array.shape[1] != dim):
        raise malformed(name, f"expected {n} embeddings of dim {dim or 'any'}, got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    # A zero vector stays zero rather than becoming NaN.
    return array / np.where(norms > 0, norms, 1.0)


class ChatStream(AsyncIterator[str]):
    """The text deltas of one streamed answer, as returned by `LLM.stream`.

    After the last delta, `completion` holds the whole text with the token usage the provider
    reported (it is ``None`` until then). The total timeout runs from the first delta request.
    Breaking out early: call `aclose()` or use ``async with`` to release the connection at once.
    """

    def __init__(
        self, name: str, timeout_s: float, events: AsyncGenerator[str | Completion, None]
    ) -> None:
        # `events` yields deltas, then one final `Completion`.
        self._name = name
        self._timeout_s = timeout_s
        self._events = events
        self._deadline: float | None = None
        self.completion: Completion | None = None

    async def __anext__(self) -> str:
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self._timeout_s
        # The deadline covers only the waits on the provider, never the consumer's own work
        # between deltas: an `asyncio.timeout` held across a yield would cancel the consumer.
        with provider_errors(self._name, self._timeout_s):
            async with asyncio.timeout_at(self._deadline):
                event = await anext(self._events)
        if isinstance(event, Completion):
            self.completion = event
            await self._events.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
