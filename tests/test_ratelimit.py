"""Token buckets, the adaptive limiter, per-client limits and the retry policy, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from metis_rag.errors import ProviderError, ProviderTimeout
from metis_rag.ratelimit import AdaptiveLimiter, ClientLimiter, TokenBucket, retry_policy
from tests.fakeclock import FakeClock


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2, capacity=4, clock=clock)
    assert [bucket.take() for _ in range(4)] == [0, 0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)  # one token comes every 0.5 s
    clock.now += 0.5
    assert bucket.take() == 0
    clock.now += 100
    assert bucket.tokens == 4  # never more than the capacity


def test_a_take_larger_than_the_capacity_goes_when_full_and_leaves_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, capacity=10, clock=clock)
    assert bucket.take(25) == 0
    assert bucket.tokens == -15
    assert bucket.take(1) == pytest.approx(1.6)  # pays the debt back first
    bucket.adjust(-20)  # a refund: the call used less than budgeted
    assert bucket.tokens == 5


async def acquire_times(limiter: AdaptiveLimiter, clock: FakeClock, n: int) -> list[float]:
    times = []

    async def one() -> None:
        await limiter.acquire()
        times.append(clock.now)

    await clock.drive(asyncio.gather(*(one() for _ in range(n))))
    return times


async def test_requests_are_spread_evenly_at_the_configured_rate() -> None:
    clock = FakeClock(0.0)
    limiter = AdaptiveLimiter(requests_per_minute=120, clock=clock, sleep=clock.sleep)
    times = await acquire_times(limiter, clock, 5)
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert limiter.stats.requests == 5


async def test_a_429_halves_the_rate_and_it_grows_back_slowly() -> None:
    clock = FakeClock(0.0)
    limiter = AdaptiveLimiter(requests_per_minute=60, recovery_s=10, clock=clock,
                              sleep=clock.sleep)
    await acquire_times(limiter, clock, 1)
    limiter.rate_limited(None)
    assert limiter.stats.requests_per_minute == 30
    assert limiter.stats.rate_cuts == 1
    limiter.rate_limited(None)  # the same burst of refusals: cut once per second at most
    assert limiter.stats.requests_per_minute == 30
    clock.now += 1.0
    limiter.rate_limited(None)
    # It had grown back by a tenth of the budget in that second (0.5 -> 0.6) before the cut.
    assert limiter.stats.requests_per_minute == pytest.approx(18)
    clock.now += 100
    assert limiter.stats.requests_per_minute == 60  # grown back, never past the budget


async def test_repeated_429s_stop_at_the_floor() -> None:
    clock = FakeClock(0.0)
    limiter = AdaptiveLimiter(requests_per_minute=80, min_fraction=0.125, clock=clock,
                              sleep=clock.sleep)
    for _ in range(10):
        limiter.rate_limited(None)
        clock.now += 1.0
    assert limiter.stats.requests_per_minute == pytest.approx(10, abs=1.5)
    assert limiter.stats.configured_requests_per_minute == 80


async def test_retry_after_pauses_every_caller_until_it_has_passed() -> None:
    clock = FakeClock(0.0)
    limiter = AdaptiveLimiter(clock=clock, sleep=clock.sleep)  # no budget, only the pause
    limiter.rate_limited(3.0)
    assert limiter.cooldown_s() == 3.0
    times = await acquire_times(limiter, clock, 3)
    assert times == [3.0, 3.0, 3.0]
    assert limiter.stats.rate_limited == 1 and limiter.stats.waited_s == pytest.approx(3.0)


async def test_the_token_budget_slows_big_requests_and_settles_real_usage() -> None:
    clock = FakeClock(0.0)
    limiter = AdaptiveLimiter(tokens_per_minute=6000, clock=clock, sleep=clock.sleep)  # 100/s
    await clock.drive(limiter.acquire(100))
    assert clock.now == 0.0
    limiter.settle(estimated=100, actual=40)  # the call used 40: 60 come back
    await clock.drive(limiter.acquire(60))
    assert clock.now == 0.0
    await clock.drive(limiter.acquire(100))
    assert clock.now == pytest.approx(1.0)
    assert limiter.stats.tokens == 200


def test_each_client_has_its_own_bucket_and_old_clients_are_forgotten() -> None:
    clock = FakeClock(0.0)
    limiter = ClientLimiter(per_minute=60, burst=2, max_clients=2, clock=clock)
    assert [limiter.check("a"), limiter.check("a")] == [0, 0]
    assert limiter.check("a") == pytest.approx(1.0)
    assert limiter.check("b") == 0  # b is not held back by a
    clock.now += 1.0
    assert limiter.check("a") == 0
    limiter.check("c")
    assert limiter.clients == 2 and limiter.rejected == 1


class Flaky:
    """Fails with the given errors, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def refused(status: int, retry_after_s: float | None = None) -> ProviderError:
    return ProviderError(f"HTTP {status}", upstream_status=status, retry_after_s=retry_after_s)


async def test_retries_back_off_exponentially_with_jitter_and_honour_retry_after() -> None:
    clock = FakeClock(0.0)
    call = Flaky(refused(503), refused(503), refused(429, retry_after_s=7.0), refused(500))
    policy = retry_policy(max_retries=4, backoff_base_s=0.5, backoff_max_s=4, budget_s=60,
                          sleep=clock.sleep)
    assert await clock.drive(policy(call)) == "ok"
    assert call.calls == 5
    first, second, after_429, fourth = clock.slept
    assert 0 <= first <= 1.0 and 0 <= second <= 2.0 and 0 <= fourth <= 4.0
    assert after_429 >= 7.0


@pytest.mark.parametrize("error", [refused(400), refused(401), ProviderTimeout("slow")])
async def test_timeouts_and_other_4xx_are_not_retried(error: Exception) -> None:
    clock = FakeClock(0.0)
    call = Flaky(error)
    policy = retry_policy(max_retries=4, backoff_base_s=0.5, backoff_max_s=4, budget_s=60,
                          sleep=clock.sleep)
    with pytest.raises(type(error)):
        await clock.drive(policy(call))
    assert call.calls == 1 and clock.slept == []


async def test_retries_stop_at_the_count_or_the_wait_budget() -> None:
    clock = FakeClock(0.0)
    call = Flaky(*[refused(503) for _ in range(10)])
    policy = retry_policy(max_retries=2, backoff_base_s=0.1, backoff_max_s=1, budget_s=60,
                          sleep=clock.sleep)
    with pytest.raises(ProviderError):
        await clock.drive(policy(call))
    assert call.calls == 3
    call = Flaky(*[refused(429, retry_after_s=20) for _ in range(10)])
    policy = retry_policy(max_retries=9, backoff_base_s=0.1, backoff_max_s=1, budget_s=30,
                          sleep=clock.sleep)
    with pytest.raises(ProviderError, match="429"):
        await clock.drive(policy(call))
    assert call.calls == 2  # a second 20 s wait would pass the 30 s budget
