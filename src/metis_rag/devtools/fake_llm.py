"""A small real HTTP server speaking the Ollama and OpenAI protocols, for tests and benchmarks.

Answers are deterministic: given numbered sources (a line starting ``[1]``) the answer is
"According to [1], <first sentence of source 1>". Embeddings are hashed bag-of-words vectors,
so texts sharing words get similar vectors. Latency, token rate, injected failures, hangs and a
requests-per-second cap are set at start or at run time (``POST /_config`` with `FakeConfig`
fields); ``GET /_stats`` shows what clients did and ``POST /_reset`` clears it (``{"config":
true}`` also restores the start-up config). ``POST /_tools {"script": [...]}`` scripts tool calls
for requests that declare `tools` (see `fake_tools`). Failures, hangs and the cap apply to chat and
embedding requests; ``/api/tags`` and ``/v1/models`` always answer.

    python -m metis_rag.devtools.fake_llm --port 11434 --latency-ms 1000 --fail-rate 0.5

    with FakeLLMServer(latency_ms=50) as fake:  # or `async with`
        fake.url, fake.configure(fail_rate=0.5, fail_status=429), fake.stats()

For load tests run the CLI as its own process, so the server does not share a GIL with the client.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from types import TracebackType
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

from .fake_content import fake_answer, hashed_embeddings
from .fake_endpoints import create_app
from .fake_state import FakeConfig, FakeState

__all__ = ["FakeConfig", "FakeLLMServer", "FakeState", "create_app", "fake_answer",
           "hashed_embeddings", "main"]


def _uvicorn_config(app: ASGIApp, **kw: Any) -> uvicorn.Config:
    # ws="none" keeps websockets (and its deprecation warnings) out; lifespan is unused.
    return uvicorn.Config(
        app, lifespan="off", ws="none", access_log=False, timeout_graceful_shutdown=2, **kw
    )


_T = TypeVar("_T")


class FakeLLMServer:
    """The fake on 127.0.0.1 (a free port unless given) in a background thread.

    A sync and an async context manager. `configure`, `stats` and `reset` act on the running
    server directly; `clock` drives the rate cap and the per-second histogram.
    """

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> None:
        self._state = FakeState((config or FakeConfig()).updated(settings), clock)
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    def start(self) -> None:
        if self._server is not None:
            return
        self._state.closing = False
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says so, and without it every response waits ~40 ms on Nagle.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(_uvicorn_config(create_app(self._state), log_level="warning"))
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(server, sock), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.005)

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(serve())

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._call(setattr, self._state, "closing", True)  # releases hanging requests
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = self._loop = None

    def configure(self, **changes: Any) -> FakeConfig:
        return self._call(self._state.configure, changes)

    def stats(self) -> dict[str, Any]:
        return self._call(self._state.stats)

    def reset(self, config: bool = False) -> None:
        self._call(self._state.reset, config)

    def script_tools(self, turns: Sequence[Mapping[str, Any]]) -> None:
        """Answer the next requests that declare tools with `turns` (see `fake_tools`)."""
        self._call(self._state.tools.load, turns)

    def tool_requests(self) -> list[dict[str, Any]]:
        """Messages and tool names of every request with tools since the script was loaded."""
        return self._call(lambda: list(self._state.tools.requests))

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs `fn` on the server's loop, where the state lives, and returns its result."""
        if self._loop is None:
            return fn(*args)

        async def call() -> _T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def __enter__(self) -> FakeLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLLMServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    for f in fields(FakeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"float": float, "int": int, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    state = FakeState(FakeConfig().updated(args))
    print(f"fake LLM on http://{host}:{port} (Ollama /api/*, OpenAI /v1/*): {state.config}")
    uvicorn.Server(_uvicorn_config(create_app(state), host=host, port=port)).run()


if __name__ == "__main__":
    main()
