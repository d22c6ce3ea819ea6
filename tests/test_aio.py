"""`wait_at_most`, the loop-timer wait that the background writers and `wait()` share, and
`FreshReads`, the shared reads of the collection lookup."""

from __future__ import annotations

import asyncio

import pytest

from metis_rag.aio import FreshReads, wait_at_most


async def test_set_by_another_task_before_the_time_is_up() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_at_most(event, 60) is True


async def test_the_time_runs_out() -> None:
    event = asyncio.Event()
    assert await wait_at_most(event, 0.01) is False
    assert event.is_set()  # left set on a timeout: callers clear it


async def test_already_set_returns_at_once() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_at_most(event, 60) is True


async def test_the_timer_is_cancelled_when_the_event_comes_first() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await wait_at_most(event, 0.05)
    event.clear()
    await asyncio.sleep(0.1)
    assert not event.is_set()  # the expired timer did not set it later


class Store:
    """A value that commits change, read by queries that take `delay` seconds and see the
    value as it was when they started (a snapshot, like one autocommit SELECT)."""

    def __init__(self, delay: float = 0.01) -> None:
        self.value = 0
        self.delay = delay
        self.started = 0
        self.fail_next = False

    async def query(self) -> int:
        self.started += 1
        seen = self.value
        if self.fail_next:
            self.fail_next = False
            await asyncio.sleep(self.delay)
            raise ConnectionError("the database went away")
        await asyncio.sleep(self.delay)
        return seen


async def test_callers_during_a_query_share_the_next_one() -> None:
    store, reads = Store(), FreshReads[str, int]()
    first = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)  # the first query is in flight
    rest = [asyncio.ensure_future(reads.read("c", store.query)) for _ in range(20)]
    assert await asyncio.gather(first, *rest) == [0] * 21
    assert store.started == 2  # the first caller's query and one for the 20 who came later


async def test_a_read_never_returns_what_was_current_before_its_caller_came() -> None:
    store, reads = Store(), FreshReads[str, int]()
    before = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)  # its query has read 0
    store.value = 1  # a commit ends while that query is in flight...
    after = await reads.read("c", store.query)  # ...so this caller must not get its 0
    assert (await before, after) == (0, 1)


async def test_keys_do_not_wait_for_each_other() -> None:
    store, reads = Store(), FreshReads[str, int]()
    await asyncio.gather(*(reads.read(k, store.query) for k in "abc"))
    assert store.started == 3


async def test_an_idle_key_runs_its_query_at_once_in_the_caller() -> None:
    store, reads = Store(delay=0), FreshReads[str, int]()
    for value in range(3):
        store.value = value
        assert await reads.read("c", store.query) == value
    assert store.started == reads.queries == 3


async def test_an_error_reaches_only_the_callers_of_its_query() -> None:
    store, reads = Store(), FreshReads[str, int]()
    store.fail_next = True
    first = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)
    later = asyncio.ensure_future(reads.read("c", store.query))
    with pytest.raises(ConnectionError):
        await first
    assert await later == 0  # its own query ran after the failed one


async def test_the_followers_query_fails_for_all_of_them() -> None:
    store, reads = Store(), FreshReads[str, int]()
    first = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(reads.read("c", store.query)) for _ in range(3)]
    store.fail_next = True  # the query that serves the three
    assert await first == 0
    for waiting in rest:
        with pytest.raises(ConnectionError):
            await waiting


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    store, reads = Store(), FreshReads[str, int]()
    leader = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)
    a = asyncio.ensure_future(reads.read("c", store.query))
    b = asyncio.ensure_future(reads.read("c", store.query))
    await asyncio.sleep(0)
    a.cancel()
    leader.cancel()  # the query in flight is cut; the callers who came later still get theirs
    assert await b == 0
    assert a.cancelled() and leader.cancelled()
