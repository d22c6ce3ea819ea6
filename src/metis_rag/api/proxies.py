"""Where a request comes from, through the reverse proxies the operator trusts.

`X-Forwarded-For` is honoured only when the connection comes from a trusted proxy; the client is
then the right-most address that is not itself a trusted proxy (what a client writes to the left
of that is unverifiable). With no trusted proxies the header is ignored: anyone could forge it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping, Sequence
from typing import Any


class ClientAddress:
    """The client address of an ASGI scope."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        # validated by `AuthSettings`: bad entries never reach here
        self._trusted = tuple(ipaddress.ip_network(t.strip(), strict=False) for t in trusted)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def of(self, scope: MutableMapping[str, Any]) -> str:
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for name, value in scope["headers"] if name == b"x-forwarded-for"
                for h in value.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:64] if _valid(hop) else peer
        return hops[0] if hops and _valid(hops[0]) else peer


def _valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
