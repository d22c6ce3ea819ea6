"""`ParseSandbox`: parse uploaded files in a few long-lived child processes that can be stopped.

A hostile file (a zip bomb, a PDF whose objects loop, a regex-heavy text) can only cost its
parser process: the process has an address-space ceiling (METIS_PARSE__MEMORY_LIMIT_MB), is
killed when a parse takes longer than METIS_PARSE__TIMEOUT_S or when the caller is cancelled
(the client went away, the task was cancelled) and the work does not end within
METIS_PARSE__CANCEL_GRACE_S, and is replaced for the next file. Processes
are reused between files, so a small file costs a pipe round trip, not a process start.

With a `ChunkingConfig` the same processes also chunk parsed documents (`chunk`), so the
server never runs the long GIL-holding scans of a large text. Parser processes run
METIS_PARSE__NICE steps below the server's CPU priority (0 by default: a niced chunker also
waits for the server's ingestion embedding).
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
from .chunker import ChunkDraft
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


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """What a parser process needs to chunk exactly as the server's `Chunker` would."""

    tokenizer: str  # the embedder's `counting_tokenizer` file
    max_tokens: int
    overlap_tokens: int
    max_chunks: int | None


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

    def __init__(self, settings: ParseSettings, chunking: ChunkingConfig | None = None) -> None:
        self.settings = settings
        self.limits = ParseLimits.from_settings(settings)
        self.chunking = chunking
        self._config = orjson.dumps({
            "limits": dataclasses.asdict(self.limits), "memory_limit_mb": settings.memory_limit_mb,
            "nice": settings.nice, "chunking": chunking and dataclasses.asdict(chunking)})
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(settings.workers)
        self._reaping: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Task[None]] = set()  # abandoned calls within their grace
        self._spare: asyncio.Task[None] | None = None
        self._prestart: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = {"parsed": 0, "chunked": 0, "refused": 0, "timeouts": 0, "abandoned": 0,
                      "abandoned_finished": 0, "crashed": 0, "started": 0, "recycled": 0}

    async def parse(self, data: bytes, filename: str) -> ParsedDocument:
        """Parse in a parser process; raises the parse's own error, parse_timeout, or
        parser_crashed. Cancelling the caller kills the process."""
        ok = self._ok(await self._call({"filename": filename}, data, filename), "parsed")
        return ParsedDocument(
            title=ok["title"], mime=ok["mime"],
            sections=[Section(text=t, page=p, heading=h) for t, p, h in ok["sections"]],
        )

    async def chunk(self, parsed: ParsedDocument, filename: str) -> list[ChunkDraft]:
        """`Chunker.chunk` in a parser process (only with a `ChunkingConfig`): the same errors
        (too_many_chunks), and the same time limit, process kill on cancel and crash handling
        as `parse`."""
        if self.chunking is None:
            raise RuntimeError("ParseSandbox.chunk needs a ChunkingConfig")
        doc = orjson.dumps({"title": parsed.title, "mime": parsed.mime,
                            "sections": [[s.text, s.page, s.heading] for s in parsed.sections]})
        ok = self._ok(await self._call({"filename": filename, "op": "chunk"}, doc, filename),
                      "chunked")
        return [ChunkDraft(text, position, page, section, tokens)
                for position, (text, page, section, tokens) in enumerate(ok["chunks"])]

    async def _call(self, header: dict[str, Any], data: bytes, filename: str) -> dict[str, Any]:
        name = sanitize_filename(filename)
        await self._slots.acquire()
        slot_handed_off = False  # to `_finish_abandoned`, which releases it
        try:
            if not self._idle and self._spare is not None:
                await asyncio.shield(self._spare)  # a replacement is starting: take it
            worker = self._idle.pop() if self._idle else await self._start()
            deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
            # Shielded: a cancelled caller must not cut the exchange mid-frame, so that the
            # process can still be kept if it answers within the grace (`_finish_abandoned`).
            call = asyncio.ensure_future(worker.call(header, data))
            try:
                async with asyncio.timeout_at(deadline):
                    reply = await asyncio.shield(call)
            except TimeoutError:
                self._drop(worker, call)
                self.stats["timeouts"] += 1
                raise ParseLimitExceeded(
                    f"{name} took longer than {self.settings.timeout_s:g} s to "
                    f"{header.get('op', 'parse')} "
                    "(METIS_PARSE__TIMEOUT_S); it is refused.", code="parse_timeout",
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                self._drop(worker, call)
                self.stats["crashed"] += 1
                raise InvalidDocument(
                    f"{name} cannot be read: the parser stopped on it (the file is damaged or "
                    "built to crash parsers).", code="parser_crashed",
                ) from None
            except BaseException:  # cancelled: nobody wants this parse any more
                self.stats["abandoned"] += 1
                if self.settings.cancel_grace_s > 0 and not self._closed:
                    finish = asyncio.get_running_loop().create_task(
                        self._finish_abandoned(worker, call, deadline))
                    self._finishing.add(finish)
                    finish.add_done_callback(self._finishing.discard)
                    slot_handed_off = True
                else:
                    self._drop(worker, call)
                raise
            self._release(worker, reply)
        finally:
            if not slot_handed_off:
                self._slots.release()
        return reply

    async def _finish_abandoned(self, worker: _Worker, call: asyncio.Future[dict[str, Any]],
                                deadline: float) -> None:
        """Lets an abandoned parse or chunking answer within the grace and keeps its process:
        a kill costs a replacement's start (~0.5 s of CPU: its imports and tokenizer), more than
        most abandoned work has left (a hostile Markdown line's refused chunking: 0.1-0.2 s).
        Work that outlasts the grace (or the parse's own time limit) is killed as before. Holds
        the caller's slot until then, so no more processes run than METIS_PARSE__WORKERS."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time()
                                              + self.settings.cancel_grace_s)):
                reply = await asyncio.shield(call)
        except (Exception, asyncio.CancelledError):  # past the grace, crashed, or closing
            self._drop(worker, call)
        else:
            self.stats["abandoned_finished"] += 1
            self._release(worker, reply)
        finally:
            self._slots.release()

    def _drop(self, worker: _Worker, call: asyncio.Future[dict[str, Any]]) -> None:
        call.cancel()
        if call.done() and not call.cancelled():
            call.exception()  # retrieved: its error is reported by the caller, not asyncio
        else:
            call.add_done_callback(lambda c: c.cancelled() or c.exception())
        self._discard(worker, replace=True)

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
            # Give the memory back instead of keeping a fat process.
            self._discard(worker, replace=True)
        else:
            self._idle.append(worker)

    def _ok(self, reply: dict[str, Any], done: str) -> dict[str, Any]:
        if "ok" in reply:
            self.stats[done] += 1
            ok: dict[str, Any] = reply["ok"]
            return ok
        self.stats["refused"] += 1
        error = reply["error"]
        cls = _ERRORS.get(error.get("type", ""), InvalidDocument)
        raise cls(str(error.get("message", "The file cannot be parsed.")),
                  code=str(error.get("code", "corrupt_document")), **(error.get("details") or {}))

    def _discard(self, worker: _Worker, replace: bool = False) -> None:
        """Kill a process; with `replace`, start its replacement now, in the background: a
        cancelled ingestion or a hostile file's kill should not make the next upload wait for
        a process to start (0.4-1 s with its imports and tokenizer)."""
        worker.kill()
        loop = asyncio.get_running_loop()
        task = loop.create_task(worker.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
        if replace and self._spare is None and not self._closed:
            self._spare = loop.create_task(self._start_spare())

    async def _start_spare(self) -> None:
        try:
            worker = await self._start()
        except Exception:  # the next call starts its own and reports what goes wrong
            log.warning("starting a spare parser process failed", exc_info=True)
            return
        finally:
            self._spare = None
        if len(self._idle) < self.settings.workers:
            self._idle.append(worker)
        else:
            self._discard(worker)

    async def close(self) -> None:
        self._closed = True
        finishing = list(self._finishing)
        for finish in finishing:  # abandoned work still within its grace: kill it now
            finish.cancel()
        await asyncio.gather(*finishing, return_exceptions=True)
        # Let process starts finish (well under a second): cancelling one while a process is
        # being created could leave that process running, known to nobody.
        for start in (self._prestart, self._spare):
            if start is not None:
                await asyncio.gather(start, return_exceptions=True)
        idle, self._idle = self._idle, []
        for worker in idle:
            self._discard(worker)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
