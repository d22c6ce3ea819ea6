"""Quotas and key parsing on their own, with an injected clock."""

from __future__ import annotations

import pytest

from metis_rag.config import AuthSettings, KeyGrant, QuotaSettings
from metis_rag.errors import QuotaExceeded
from metis_rag.tenancy.keys import KeyRing, hash_key, new_key, static_keys
from metis_rag.tenancy.principal import SINGLE_TENANT, Principal
from metis_rag.tenancy.quotas import Quotas
from tests.fakeclock import FakeClock


def test_questions_per_minute_refill_and_say_when() -> None:
    clock = FakeClock(1_000_000.0)
    quotas = Quotas(AuthSettings(tenant_quotas={"acme": QuotaSettings(questions_per_minute=2)}),
                    clock=clock)
    quotas.admit_question("acme")
    quotas.admit_question("acme")
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit_question("acme")
    assert refused.value.status == 429 and refused.value.details["quota"] == "questions_per_minute"
    assert refused.value.retry_after_s == pytest.approx(30.0)
    for _ in range(10):
        quotas.admit_question("globex")  # the default: no limit
    clock.now += 30
    quotas.admit_question("acme")


def test_llm_tokens_per_day_reset_at_utc_midnight() -> None:
    day = 86_400.0
    clock = FakeClock(day * 20_000 + day - 3600)  # 23:00 UTC
    quotas = Quotas(AuthSettings(quotas=QuotaSettings(llm_tokens_per_day=100)), clock=clock)
    quotas.spend_tokens("acme", 60)
    quotas.admit_question("acme")
    quotas.spend_tokens("acme", 60)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit_question("acme")
    assert refused.value.retry_after_s == pytest.approx(3600)
    assert "llm_tokens_per_day (100)" in refused.value.message
    quotas.admit_question("globex")  # its own day
    clock.now += 3600
    quotas.admit_question("acme")  # a new UTC day


def test_plain_list_keys_are_admins_of_default_and_objects_name_tenant_and_role() -> None:
    listed = static_keys(["k1"])
    assert [(p.tenant, p.role) for p in listed.values()] == [("default", "admin")]
    assert hash_key("k1") in listed and "k1" not in str(listed)
    named = static_keys({"k2": KeyGrant(tenant="acme", role="reader")})
    ring = KeyRing(named)
    found = ring.lookup("k2")
    assert ring.enabled and found is not None and (found.tenant, found.role) == ("acme", "reader")
    assert ring.lookup("k1") is None and ring.lookup("k2 ") is None
    assert not KeyRing({}).enabled


def test_new_keys_are_random_and_carry_their_public_id() -> None:
    (id1, k1), (id2, k2) = new_key(), new_key()
    assert id1 != id2
    assert k1 != k2 and k1.startswith(f"mts_{id1}_") and len(k1) > 50


def test_namespaces_stay_inside_the_tenant() -> None:
    acme = Principal("acme", "reader", scoped=True)
    assert acme.namespace("team") == "acme/team" and acme.namespace_prefix == "acme/"
    assert SINGLE_TENANT.namespace("team") == "team" and SINGLE_TENANT.namespace_prefix is None
    with pytest.raises(Exception, match="may not contain"):
        acme.namespace("../globex")
