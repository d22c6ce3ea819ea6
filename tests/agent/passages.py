"""A small real search tool over in-memory passages (term overlap), for planner tests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from metis_rag.agent.builtin_calculator import Calculator
from metis_rag.agent.registry import ToolRegistry
from metis_rag.agent.tools import ToolCitation, ToolContext, ToolResult, ToolSpec
from metis_rag.cache.memory import MemoryBackend
from metis_rag.cache.tiered import TieredCache
from metis_rag.store.lookup import CollectionRef

SERVICES = """ftp\t\t21/tcp
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
telnet\t\t23/tcp
smtp\t\t25/tcp\t\tmail
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
https\t\t443/tcp\t\t\t\t# http protocol over TLS/SSL
imaps\t\t993/tcp\t\t\t\t# IMAP over SSL
pop3s\t\t995/tcp\t\t\t\t# POP-3 over SSL"""
PROTOCOLS = """icmp\t1\tICMP\t\t# internet control message protocol
tcp\t6\tTCP\t\t# transmission control protocol
udp\t17\tUDP\t\t# user datagram protocol"""
PROSE = ("The tutorial was written by the core team. It is covered by the PSF license. "
         "Reading it takes an afternoon.")
DOCS = {"services": SERVICES, "protocols": PROTOCOLS, "tutorial": PROSE}
_WORD = re.compile(r"[a-z0-9]+")


def _chunks() -> list[tuple[str, str, str]]:
    out = []
    for doc, text in DOCS.items():
        lines = text.splitlines()
        for i in range(0, len(lines), 3):
            out.append((doc, f"{doc}-{i}", "\n".join(lines[i:i + 3])))
    return out


class PassageSearch:
    spec = ToolSpec(
        name="rag_search", description="Search the passages.",
        parameters={"type": "object", "properties": {
            "query": {"type": "string", "minLength": 1},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20}},
            "required": ["query"], "additionalProperties": False},
        cache_ttl_s=60.0, reads_documents=True)

    def __init__(self, delay_s: float = 0.0, gate: asyncio.Barrier | None = None) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s
        self.gate = gate

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        query = str(arguments["query"])
        self.calls.append(query)
        if self.gate is not None:
            await self.gate.wait()  # only passes when enough searches are in flight together
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        words = set(_WORD.findall(query.lower()))
        scored = sorted(((len(words & set(_WORD.findall(text.lower()))), n, doc, cid, text)
                         for n, (doc, cid, text) in enumerate(_chunks())),
                        key=lambda t: (-t[0], t[1]))
        top = [t for t in scored if t[0] > 0][: int(arguments.get("top_k", 3))]
        cites = [ToolCitation(doc, f"{doc}.txt", cid, text, float(score))
                 for score, _, doc, cid, text in top]
        return ToolResult("\n".join(c.text for c in cites), data={"hits": len(cites)},
                          citations=cites)


def passage_registry(search: PassageSearch | None = None, **kwargs: Any) -> ToolRegistry:
    async def version(ctx: ToolContext) -> CollectionRef:
        return CollectionRef(1, 1, 0)

    return ToolRegistry([search or PassageSearch(), Calculator()],
                        cache=TieredCache([MemoryBackend()], prefix="tool:"), versions=version,
                        **kwargs)
