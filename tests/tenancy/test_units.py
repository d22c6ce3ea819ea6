"""Quotas and key parsing on their own, with an injected clock."""

from __future__ import annotations

import pytest

from metis_rag.config import AuthSettings, KeyGrant, QuotaSettings
from metis_rag.errors import QuotaExceeded
from metis_rag.tenancy.keys import KeyRing, hash_key, new_key, static_keys
from metis_rag.tenancy.principal import SINGLE_TENANT, Principal
from metis_rag.tenancy.quotas import Quotas
from tests.fakeclock import FakeClock


async def test_questions_per_minute_count_in_a_minute_window_and_say_when() -> None:
    clock = FakeClock(1_000_060.0)  # 40 s into a UTC minute
    quotas = Quotas(AuthSettings(tenant_quotas={"acme": QuotaSettings(questions_per_minute=2)}),
                    clock=clock)
    await quotas.admit_question("acme")
    await quotas.admit_question("acme")
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.admit_question("acme")
    assert refused.value.status == 429 and refused.value.details["quota"] == "questions_per_minute"
    assert refused.value.retry_after_s == pytest.approx(20.0)  # the minute's end
    for _ in range(10):
        await quotas.admit_question("globex")  # the default: no limit
    clock.now += 20
    await quotas.admit_question("acme")


async def test_under_one_question_a_minute_widens_the_window() -> None:
    clock = FakeClock(1_200_000.0)  # the start of a 120 s window
    quotas = Quotas(AuthSettings(quotas=QuotaSettings(questions_per_minute=0.5)), clock=clock)
    await quotas.admit_question("acme")
    clock.now += 100
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.admit_question("acme")
    assert refused.value.retry_after_s == pytest.approx(20.0)
    clock.now += 20
    await quotas.admit_question("acme")


async def test_llm_tokens_per_day_reset_at_utc_midnight() -> None:
    day = 86_400.0
    clock = FakeClock(day * 20_000 + day - 3600)  # 23:00 UTC
    quotas = Quotas(AuthSettings(quotas=QuotaSettings(llm_tokens_per_day=100)), clock=clock)
    await quotas.spend_tokens("acme", 60)
    await quotas.admit_question("acme")
    await quotas.spend_tokens("acme", 60)
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.admit_question("acme")
    assert refused.value.retry_after_s == pytest.approx(3600)
    assert "llm_tokens_per_day (100)" in refused.value.message
    await quotas.admit_question("globex")  # its own day
    clock.now += 3600
    await quotas.admit_question("acme")  # a new UTC day


def test_plain_list_keys_are_operators_of_default_and_objects_name_tenant_and_role() -> None:
    listed = static_keys(["k1"])
    assert [(p.tenant, p.role) for p in listed.values()] == [("default", "operator")]
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
