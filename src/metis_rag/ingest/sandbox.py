"""`ParseSandbox`: parse uploaded files in a few long-lived child processes that can be stopped.

A hostile file (a zip bomb, a PDF whose objects loop, a regex-heavy text) can only cost its
parser process: the process has an address-space ceiling (METIS_PARSE__MEMORY_LIMIT_MB), is
killed when a parse takes longer than METIS_PARSE__TIMEOUT_S or when the caller is cancelled
(the client went away, the task was cancelled), and is replaced for the next file. Processes
are reused between files, so a small file costs a pipe round trip, not a process start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import sys
from typing import Any

import orjson

from .. import errors
from ..config import ParseSettings
from ..errors import InvalidDocument, MetisError, ParseLimitExceeded
from .limits import ParseLimits
from .parsers import ParsedDocument, Section, sanitize_filename

log = logging.getLogger(__name__)

# The error classes a parser process may name in its reply; anything else is a crash.
_ERRORS: dict[str, type[MetisError]] = {
    cls.__name__: cls
    for cls in (errors.InvalidDocument, errors.ParseLimitExceeded, errors.InvalidInput,
                errors.UnsupportedMediaType, errors.ContentMismatch, errors.PayloadTooLarge)
}
_MAX_REPLY_BYTES = 1 << 31


class _Worker:
    """One parser process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.peak_rss_mb = 0.0

    @classmethod
    async def spawn(cls, config: bytes) -> _Worker:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metis_rag.ingest.parse_worker", config,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        ))

    async def ready(self) -> None:
        """Waits for {"ready": true}: its imports and memory ceiling are in place."""
        await self._reply()

    async def call(self, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None
        payload = orjson.dumps(header)
        self.proc.stdin.write(struct.pack(">I", len(payload)) + payload
                              + struct.pack(">Q", len(data)))
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()
        return await self._reply()

    async def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        size = struct.unpack(">I", await self.proc.stdout.readexactly(4))[0]
        if size > _MAX_REPLY_BYTES:
            raise ConnectionError("oversized reply from a parser process")
        reply: dict[str, Any] = orjson.loads(await self.proc.stdout.readexactly(size))
        return reply

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    async def wait(self) -> None:
        await self.proc.wait()
        # asyncio closes a subprocess transport only once its pipes report EOF; close it now
        # the process is gone so no transport outlives its process (a ResourceWarning).
        self.proc._transport.close()  # type: ignore[attr-defined]  # asyncio has no public way


class ParseSandbox:
    """A pool of parser processes, started on first use (or ahead of it by `prestart`) and
    stopped by `close`."""

    def __init__(self, settings: ParseSettings) -> None:
        self.settings = settings
        self.limits = ParseLimits.from_settings(settings)
        self._config = orjson.dumps({"limits": dataclasses.asdict(self.limits),
                                     "memory_limit_mb": settings.memory_limit_mb})
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(settings.workers)
        self._reaping: set[asyncio.Task[None]] = set()
        self._prestart: asyncio.Task[None] | None = None
        self.stats = {"parsed": 0, "refused": 0, "timeouts": 0, "abandoned": 0, "crashed": 0,
                      "started": 0, "recycled": 0}

    async def parse(self, data: bytes, filename: str) -> ParsedDocument:
        """Parse in a parser process; raises the parse's own error, parse_timeout, or
        parser_crashed. Cancelling the caller kills the process."""
        name = sanitize_filename(filename)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    reply = await worker.call({"filename": filename}, data)
            except TimeoutError:
                self._discard(worker)
                self.stats["timeouts"] += 1
                raise ParseLimitExceeded(
                    f"{name} took longer than {self.settings.timeout_s:g} s to parse "
                    "(METIS_PARSE__TIMEOUT_S); it is refused.", code="parse_timeout",
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                self._discard(worker)
                self.stats["crashed"] += 1
                raise InvalidDocument(
                    f"{name} cannot be read: the parser stopped on it (the file is damaged or "
                    "built to crash parsers).", code="parser_crashed",
                ) from None
            except BaseException:  # cancelled: nobody wants this parse any more
                self._discard(worker)
                self.stats["abandoned"] += 1
                raise
            self._release(worker, reply)
        return self._result(reply)

    def prestart(self) -> None:
        """Starts the parser processes in the background, so that the first files do not wait
        for one (each takes ~0.3 s of CPU and more of wall time to import its parsers, while
        the embedding model has nothing to do yet)."""
        if self._prestart is None:
            self._prestart = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        async def one() -> None:
            async with self._slots:
                if len(self._idle) < self.settings.workers:  # a parse may have started one
                    self._idle.append(await self._start())

        results = await asyncio.gather(*(one() for _ in range(self.settings.workers)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # the first parse starts its own and says why
                log.warning("could not start a parser process ahead of use: %s", result)

    async def _start(self) -> _Worker:
        self.stats["started"] += 1
        worker = await _Worker.spawn(self._config)
        try:
            await worker.ready()
        except BaseException:
            self._discard(worker)
            raise
        return worker

    def _release(self, worker: _Worker, reply: dict[str, Any]) -> None:
        rss = float(reply.get("max_rss_mb") or 0)
        error = reply.get("error") or {}
        if rss > self.settings.recycle_rss_mb or error.get("code") == "parse_memory":
            self.stats["recycled"] += 1
            self._discard(worker)  # give the memory back instead of keeping a fat process
        else:
            self._idle.append(worker)

    def _result(self, reply: dict[str, Any]) -> ParsedDocument:
        if "ok" in reply:
            self.stats["parsed"] += 1
            ok = reply["ok"]
            return ParsedDocument(
                title=ok["title"], mime=ok["mime"],
                sections=[Section(text=t, page=p, heading=h) for t, p, h in ok["sections"]],
            )
        self.stats["refused"] += 1
        error = reply["error"]
        cls = _ERRORS.get(error.get("type", ""), InvalidDocument)
        raise cls(str(error.get("message", "The file cannot be parsed.")),
                  code=str(error.get("code", "corrupt_document")), **(error.get("details") or {}))

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        task = asyncio.get_running_loop().create_task(worker.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        if self._prestart is not None:
            # Let it finish (a process start takes well under a second): cancelling it while a
            # process is being created could leave that process running, known to nobody.
            await asyncio.gather(self._prestart, return_exceptions=True)
        idle, self._idle = self._idle, []
        for worker in idle:
            self._discard(worker)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
