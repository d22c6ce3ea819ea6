"""A parser process: `python -m metis_rag.ingest.parse_worker '<config json>'`.

It reads files from stdin and writes their sections (or the error) to stdout, one at a time,
under an address-space ceiling, METIS_PARSE__NICE steps below the server's CPU priority. Given
a tokenizer file, it also chunks parsed documents (request `"op": "chunk"`, the parsed document
as JSON in place of the file): chunking a large text holds the GIL for long stretches (regex
scans and word counts over megabytes are single C calls), which in the server stalled every
other request for as long. The server (`sandbox.ParseSandbox`) kills it when a parse runs
out of time or the client goes away. Frames: a 4-byte big-endian length, then JSON; a request
is followed by an 8-byte length and the file's bytes. Replies are JSON only, never pickle, so a
parser subverted by a hostile file cannot run code in the server through them.
"""

from __future__ import annotations

import os
import resource
import struct
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

if TYPE_CHECKING:
    from ..errors import MetisError

_MB = 1024 * 1024


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)  # a buffered read returns short only at end of input
    return data if len(data) == n else None


def _write(stream: BinaryIO, body: dict[str, Any]) -> None:
    payload = orjson.dumps(body)
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def _metis_error_reply(exc: MetisError) -> dict[str, Any]:
    """A MetisError raised in this process, as the reply the server turns back into it."""
    return {"error": {"type": type(exc).__name__, "code": exc.code, "message": exc.message,
                      "details": exc.details}}


def _error_reply(code: str, message: str, kind: str = "ParseLimitExceeded",
                 details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": message, "details": details or {}}}


def _parse_one(data: bytes, filename: str, limits: Any) -> dict[str, Any]:
    from ..errors import MetisError
    from .parsers import parse, sanitize_filename

    name = sanitize_filename(filename)
    try:
        doc = parse(data, filename, limits)
    except MetisError as exc:
        return _metis_error_reply(exc)
    except MemoryError:
        return _error_reply("parse_memory", f"{name} needs more memory to parse than a parser "
                            "may use (METIS_PARSE__MEMORY_LIMIT_MB); it is refused.")
    except RecursionError:
        return _error_reply("too_deeply_nested", f"{name} is nested too deeply to parse safely.")
    return {"ok": {"title": doc.title, "mime": doc.mime,
                   "sections": [[s.text, s.page, s.heading] for s in doc.sections]}}


def _chunk_one(doc: dict[str, Any], filename: str, chunker: Any) -> dict[str, Any]:
    from ..errors import MetisError
    from .parsers import ParsedDocument, Section, sanitize_filename

    parsed = ParsedDocument(title=doc["title"], mime=doc["mime"],
                            sections=[Section(text=t, page=p, heading=h)
                                      for t, p, h in doc["sections"]])
    name = sanitize_filename(filename)
    del doc
    try:
        drafts = chunker.chunk(parsed, None, name)
    except MetisError as exc:
        return _metis_error_reply(exc)
    except MemoryError:
        return _error_reply("parse_memory", f"{name} needs more memory to chunk than a parser "
                            "may use (METIS_PARSE__MEMORY_LIMIT_MB); it is refused.")
    return {"ok": {"chunks": [[c.text, c.page, c.section, c.token_count] for c in drafts]}}


def _chunker(config: dict[str, Any] | None) -> Any:
    if not config:
        return None
    # One core at most: the tokenizer's thread pool would compete with the server's queries
    # (and each of its threads reserves address space under the ceiling).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from ..embed.packaged import counter_from_file, counts_add_up
    from .chunker import Chunker

    return Chunker(counter_from_file(config["tokenizer"]), config["max_tokens"],
                   config["overlap_tokens"], max_chunks=config["max_chunks"],
                   counts_add_up=counts_add_up(config["tokenizer"]))


def main() -> None:
    config = orjson.loads(sys.argv[1])
    # Below the server (when set): a big parse or chunking waits while it answers questions.
    os.nice(config.get("nice", 0))
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    from . import parsers  # noqa: F401  (import the parsers before the ceiling and the first file)
    from .limits import ParseLimits

    for lib in ("pypdf", "docx", "selectolax.lexbor", "lxml.etree"):
        __import__(lib)
    limits = ParseLimits(**config["limits"])
    chunker = _chunker(config.get("chunking"))
    ceiling = config["memory_limit_mb"] * _MB
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    _write(out, {"ready": True})
    while True:
        try:
            if not _serve_one(inp, out, limits, chunker):
                return
        except MemoryError:
            # Even reading the file or writing the reply did not fit: say so in a few bytes and
            # exit, giving all of it back.
            _write(out, _error_reply("parse_memory", "The file needs more memory to parse than "
                                     "a parser may use (METIS_PARSE__MEMORY_LIMIT_MB)."))
            return


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the server across exec.
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _serve_one(inp: BinaryIO, out: BinaryIO, limits: Any, chunker: Any) -> bool:
    """Parses (or chunks) one file; False when the server has gone or this process should start
    afresh."""
    head = _read_exactly(inp, 4)
    if head is None:
        return False  # the server closed our stdin: it is shutting down
    request = orjson.loads(_read_exactly(inp, struct.unpack(">I", head)[0]) or b"{}")
    size = struct.unpack(">Q", _read_exactly(inp, 8) or bytes(8))[0]
    data = _read_exactly(inp, size) or b""
    if request.get("op") == "chunk":
        reply = (_chunk_one(orjson.loads(data), request["filename"], chunker) if chunker
                 else _error_reply("no_chunker", "This parser process was started without a "
                                   "tokenizer.", kind="InvalidDocument"))
    else:
        reply = _parse_one(data, request["filename"], limits)
    del data
    reply["max_rss_mb"] = _peak_rss_mb()
    _write(out, reply)
    # A process that ran out of memory may be fragmented: it exits and is replaced.
    return bool(reply.get("error", {}).get("code") != "parse_memory")

if __name__ == "__main__":
    main()
