"""The HTTP protocol of `metis serve`: writes of one loop turn leave in one send, and a
real server answers through it as through uvicorn's own."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from metis_rag.httpserver import CoalescingHttpToolsProtocol, CoalescingTransport
from tests.waiting import eventually


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what it was asked to send, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_loop_turn_leave_together_and_in_order() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert inner.sent == [] and transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)  # the end of this loop turn
    assert inner.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.sent[-1] == b"next"


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert inner.sent == [b"last words"] and inner.closed
    await asyncio.sleep(0)  # the turn's flush finds nothing left to send
    assert inner.sent == [b"last words"]
    aborted = RecordingTransport()
    transport = CoalescingTransport(aborted, asyncio.get_running_loop())
    transport.write(b"never")
    transport.abort()
    await asyncio.sleep(0)
    assert aborted.sent == [] and aborted.aborted


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    size = int(scope["query_string"] or b"0")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    if size:  # a large body, in pieces: the write buffer's flow control is exercised
        for _ in range(size):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": b"echo:" + body})


async def test_a_server_answers_through_it_on_kept_alive_connections() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, what="the server never started")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(20):  # one connection, kept alive
                r = await client.post("/", content=f"question {i}".encode())
                assert r.status_code == 200 and r.content == f"echo:question {i}".encode()
            big = await client.get("/?200")  # 12.5 MiB, streamed
            assert big.status_code == 200 and len(big.content) == 200 * 65536
            again = await client.post("/", content=b"after")
            assert again.content == b"echo:after"
    finally:
        server.should_exit = True
        await serving
