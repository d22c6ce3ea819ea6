"""Rate limits on an injected clock: token buckets, an adaptive limiter per LLM provider, one
bucket per HTTP client, and the retry policy (tenacity) for calls a provider refused.

    TokenBucket       capacity and refill rate; `take(n)` returns 0 or the seconds to wait
    AdaptiveLimiter   requests/min and tokens/min of one provider: halves its rate on 429,
                      honours Retry-After (nobody calls before it has passed), grows back slowly
    ClientLimiter     a bucket per client key (bounded), for inbound limits on the HTTP API
    SlidingWindow     at most N calls a window per client, for cache invalidation
    retry_policy      exponential backoff with full jitter, at least Retry-After, a wait budget

aiolimiter's leaky bucket has its rate fixed at construction and reads the loop's clock, and
`limits` never waits, so the buckets here are our own (a few lines); retries are tenacity's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from .errors import ProviderError, ProviderTimeout, RateLimited

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_s`. A take larger than the capacity is allowed
    when the bucket is full and leaves it in debt, so big requests are slowed, never refused."""

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = time.monotonic) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def take(self, amount: float = 1.0) -> float:
        """Takes `amount` and returns 0, or takes nothing and returns the seconds until it could."""
        self._refill()
        need = min(amount, self.capacity)
        # The tolerance keeps float rounding from asking for waits too short to move a clock.
        if self._tokens >= need - 1e-9:
            self._tokens -= amount
            return 0.0
        return (need - self._tokens) / self.rate_per_s

    def adjust(self, amount: float) -> None:
        """Charges (positive) or refunds (negative) tokens after the fact, e.g. real usage."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - amount)

    def set_rate(self, rate_per_s: float) -> None:
        self._refill()  # tokens earned so far count at the old rate
        self.rate_per_s = rate_per_s


@dataclass(frozen=True, slots=True)
class LimiterStats:
    requests: int
    tokens: int
    rate_limited: int  # 429 answers seen
    rate_cuts: int
    waited_s: float
    requests_per_minute: float  # current (adapted) limit; 0 = no limit
    configured_requests_per_minute: float
    cooldown_s: float  # until Retry-After has passed


class AdaptiveLimiter:
    """Requests-per-minute and tokens-per-minute budgets for one provider (0 = no limit).

    On a 429 the rate is halved (at most once per `cut_gap_s`, so a burst of refusals of
    requests sent at the old rate counts once), down to `min_fraction` of the configured rate,
    and no call starts before the Retry-After has passed. Without refusals the rate grows back
    linearly, from nothing to the configured rate in `recovery_s`. Waiters are served in order.
    """

    def __init__(
        self,
        requests_per_minute: float = 0.0,
        tokens_per_minute: float = 0.0,
        *,
        burst_requests: float = 1.0,
        min_fraction: float = 1 / 8,
        recovery_s: float = 60.0,
        cut_gap_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self.configured_rpm = requests_per_minute
        self._min_fraction = min_fraction
        self._recovery_s = recovery_s
        self._cut_gap_s = cut_gap_s
        self._fraction = 1.0
        self._fraction_at = clock()
        self._last_cut = float("-inf")
        self._cooldown_until = float("-inf")
        self._requests = (
            TokenBucket(requests_per_minute / 60, burst_requests, clock)
            if requests_per_minute > 0 else None
        )
        # A second's worth of tokens, so a budget of N/min is spread over the minute.
        self._tokens = (
            TokenBucket(tokens_per_minute / 60, tokens_per_minute / 60, clock)
            if tokens_per_minute > 0 else None
        )
        self._order = asyncio.Lock()
        self._counts = {"requests": 0, "tokens": 0, "rate_limited": 0, "cuts": 0}
        self._waited_s = 0.0

    @property
    def stats(self) -> LimiterStats:
        self._grow()
        c = self._counts
        return LimiterStats(
            c["requests"], c["tokens"], c["rate_limited"], c["cuts"], round(self._waited_s, 3),
            self._requests.rate_per_s * 60 if self._requests else 0.0, self.configured_rpm,
            max(0.0, self._cooldown_until - self._clock()),
        )

    def cooldown_s(self) -> float:
        """Seconds until a call may start because of a Retry-After (0 when none is pending)."""
        return max(0.0, self._cooldown_until - self._clock())

    async def acquire(self, tokens: int = 0) -> None:
        """Waits until one request of about `tokens` tokens fits every budget, then counts it."""
        async with self._order:
            while (wait := self._wait(tokens)) > 0:
                self._waited_s += wait
                await self._sleep(wait)
        self._counts["requests"] += 1
        self._counts["tokens"] += tokens

    def _wait(self, tokens: int) -> float:
        if (cooldown := self.cooldown_s()) > 0:
            return cooldown
        self._grow()
        if self._requests is not None and (wait := self._requests.take(1)) > 0:
            return wait
        if self._tokens is not None and tokens and (wait := self._tokens.take(tokens)) > 0:
            if self._requests is not None:
                self._requests.adjust(-1)  # give the request slot back while we wait
            return wait
        return 0.0

    def settle(self, estimated: int, actual: int) -> None:
        """Charges the difference once a call's real token usage is known."""
        self._counts["tokens"] += actual - estimated
        if self._tokens is not None:
            self._tokens.adjust(actual - estimated)

    def rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: honour its Retry-After and halve the rate (once per `cut_gap_s`)."""
        now = self._clock()
        self._counts["rate_limited"] += 1
        if retry_after_s:
            self._cooldown_until = max(self._cooldown_until, now + retry_after_s)
        if self._requests is None or now - self._last_cut < self._cut_gap_s:
            return
        self._grow()
        self._last_cut = now
        self._counts["cuts"] += 1
        self._set_fraction(max(self._min_fraction, self._fraction / 2), now)

    def _grow(self) -> None:
        now = self._clock()
        if self._fraction < 1.0 and now > self._cooldown_until:
            since = now - max(self._fraction_at, self._cooldown_until)
            self._set_fraction(min(1.0, self._fraction + since / self._recovery_s), now)

    def _set_fraction(self, fraction: float, now: float) -> None:
        self._fraction, self._fraction_at = fraction, now
        if self._requests is not None:
            self._requests.set_rate(self.configured_rpm / 60 * fraction)


class ClientLimiter:
    """One token bucket per client key: `per_minute` requests, `burst` at once. The least
    recently seen keys are forgotten past `max_clients` (a forgotten client starts full)."""

    def __init__(
        self, per_minute: float, burst: float, *, max_clients: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_minute, self.burst = per_minute, burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.rejected = 0

    def check(self, client: str) -> float:
        """0 if `client` may go ahead (and counts it), else the seconds until it may."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.per_minute / 60, self.burst,
                                                         self._clock)
            if len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        wait = bucket.take(1)
        if wait:
            self.rejected += 1
        return wait

    @property
    def clients(self) -> int:
        return len(self._buckets)


class SlidingWindow:
    """At most `limit` calls per `window_s` per client (cache invalidation over HTTP)."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._calls: dict[str, deque[float]] = defaultdict(deque)

    def check(self, client: str) -> None:
        now = self.clock()
        calls = self._calls[client]
        while calls and calls[0] <= now - self.window_s:
            calls.popleft()
        if len(calls) >= self.limit:
            retry = calls[0] + self.window_s - now
            raise RateLimited(
                f"Cache invalidation is limited to {self.limit} calls a minute; retry in "
                f"{retry:.0f} s.", retry_after_s=retry,
            )
        calls.append(now)


def key_id(api_key: str) -> str:
    """A short stable id for an API key, so limiter state never holds the key itself."""
    return hashlib.blake2b(api_key.encode(), digest_size=8).hexdigest()


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


def is_retryable(exc: BaseException) -> bool:
    """429 and 5xx answers are worth another try; a timeout is not (the next provider is)."""
    return (
        isinstance(exc, ProviderError) and not isinstance(exc, ProviderTimeout)
        and exc.upstream_status in RETRY_STATUSES
    )


def retry_policy(
    *, max_retries: int, backoff_base_s: float, backoff_max_s: float, budget_s: float,
    sleep: Sleep = asyncio.sleep, before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """Retries 429/5xx with full-jitter exponential backoff, never sooner than the answer's
    Retry-After; gives up after `max_retries` or when the waits would pass `budget_s`."""
    backoff = wait_random_exponential(multiplier=backoff_base_s, max=backoff_max_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None) or 0.0
        return max(float(retry_after), backoff(state))

    def stop(state: RetryCallState) -> bool:
        over_budget = state.idle_for + state.upcoming_sleep > budget_s
        return state.attempt_number > max_retries or over_budget

    return AsyncRetrying(
        stop=stop, wait=wait, retry=retry_if_exception(is_retryable), sleep=sleep,
        reraise=True, before_sleep=before_sleep,
    )
