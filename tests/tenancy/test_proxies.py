"""The client address behind trusted reverse proxies: X-Forwarded-For only from them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from metis_rag.api.proxies import ClientAddress
from metis_rag.config import AuthSettings, Settings
from tests.tenancy.test_matrix import KEYS, serving


def scope(peer: str, *forwarded: str) -> dict[str, object]:
    return {"client": (peer, 5555),
            "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    none = ClientAddress()
    assert none.of(scope("10.0.0.5", "203.0.113.9")) == "10.0.0.5"  # default: header ignored
    lb = ClientAddress(["10.0.0.0/8", "::1"])
    assert lb.of(scope("10.0.0.5", "203.0.113.9")) == "203.0.113.9"
    assert lb.of(scope("198.51.100.1", "203.0.113.9")) == "198.51.100.1"  # untrusted peer
    # A client's own (forged) entries sit left of what the trusted proxies appended.
    assert lb.of(scope("10.0.0.5", "1.2.3.4, 203.0.113.9, 10.0.0.7")) == "203.0.113.9"
    assert lb.of(scope("10.0.0.5", "1.2.3.4", "203.0.113.9")) == "203.0.113.9"  # two headers
    assert lb.of(scope("::1", "2001:db8::7")) == "2001:db8::7"
    assert lb.of(scope("10.0.0.5", "not-an-address")) == "10.0.0.5"
    assert lb.of(scope("10.0.0.5")) == "10.0.0.5"  # no header: the proxy itself
    assert lb.of(scope("10.0.0.5", "10.0.0.9")) == "10.0.0.9"  # only proxies: the farthest
    assert lb.of({"headers": []}) == ""


def test_a_bad_trusted_proxy_is_a_clear_settings_error() -> None:
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        AuthSettings(trusted_proxies=["10.0.0.0/8", "proxy.example"])


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [[], ["10.9.8.0/24"]])
async def test_the_audit_log_says_where_from_behind_a_proxy(
    make_settings: Callable[..., Settings], trusted: list[str],
) -> None:
    settings = make_settings(api_keys=KEYS, auth={"trusted_proxies": trusted})
    async with serving(settings) as (_, client):  # connections come from 10.9.8.7
        async with client("acme", "writer") as writer:
            r = await writer.post("/api/tasks", json={"type": "noop"},
                                  headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.9"})
            assert r.status_code == 202, r.text
        async with client("acme", "admin") as admin:
            for _ in range(100):  # audit records are written in batches
                items = (await admin.get("/api/audit", params={"action": "task.submit"})).json()
                if items["items"]:
                    break
                await asyncio.sleep(0.05)
            assert [r["client"] for r in items["items"]] == (
                ["203.0.113.9"] if trusted else ["10.9.8.7"])
