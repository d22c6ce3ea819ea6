"""MicroBatcher and BatchingEmbedder: who gets batched with whom, and who gets which error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from metis_rag.batching import BatchingEmbedder, MicroBatcher
from metis_rag.devtools.fake_llm import hashed_embeddings
from tests.fakeclock import FakeClock, settle


class Recorder:
    """A batch function that doubles numbers and remembers the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(f"bad item {i}") if i < 0 else i * 2 for i in items]


def batcher(
    fn: Recorder, clock: FakeClock, **kw: object
) -> MicroBatcher[int, int]:
    return MicroBatcher(fn, clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


async def test_concurrent_callers_share_one_batch_and_get_their_own_results() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=5)
    results = await clock.drive(asyncio.gather(*(b.submit(i) for i in range(6))))
    assert results == [0, 2, 4, 6, 8, 10]
    assert fn.batches == [[0, 1, 2, 3, 4, 5]]
    assert b.stats.batches == 1 and b.stats.mean_batch_size == 6


async def test_a_lone_item_waits_for_the_window_and_no_longer() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=5)
    pending = asyncio.ensure_future(b.submit(21))
    await settle()
    await clock.advance(0.004)
    assert fn.batches == []  # still inside the 5 ms window
    await clock.advance(0.001)
    assert await pending == 42
    assert fn.batches == [[21]]


async def test_without_a_window_a_lone_item_runs_at_once_and_others_batch_behind_it() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=0)
    ran_in: list[asyncio.Task[object] | None] = []
    lone = MicroBatcher(lambda items: asyncio.sleep(0, ran_in.append(asyncio.current_task())
                                                    or items), max_wait_ms=0)
    caller = asyncio.ensure_future(lone.submit(7))
    assert await caller == 7 and ran_in == [caller]  # in its caller's task: no hand-offs
    assert await b.submit(21) == 42 and clock.slept == []
    fn.gate = asyncio.Event()
    first = asyncio.ensure_future(b.submit(1))
    await settle()
    assert fn.batches == [[21], [1]]  # running, in its caller's task
    rest = [asyncio.ensure_future(b.submit(i)) for i in (2, 3, 4)]
    await settle()
    assert fn.batches == [[21], [1]]  # they wait for the running batch, as before
    fn.gate.set()
    assert await first == 2 and await asyncio.gather(*rest) == [4, 6, 8]
    assert fn.batches == [[21], [1], [2, 3, 4]] and b.stats.batches == 3


async def test_a_full_batch_goes_without_waiting_for_the_window() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=4, max_wait_ms=1000)
    futures = [asyncio.ensure_future(b.submit(i)) for i in range(4)]
    await settle()
    assert fn.batches == [[0, 1, 2, 3]]
    assert [f.result() for f in futures] == [0, 2, 4, 6]
    assert clock.now == 1000.0


async def test_more_items_than_max_batch_are_split() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=4, max_wait_ms=5)
    results = await clock.drive(asyncio.gather(*(b.submit(i) for i in range(10))))
    assert results == [i * 2 for i in range(10)]
    assert [len(x) for x in fn.batches] == [4, 4, 2]
    assert b.stats.batches == 3 and b.stats.mean_batch_size == pytest.approx(10 / 3)
    assert b.stats.largest_batch == 4


async def test_items_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    clock, fn = FakeClock(), Recorder()
    fn.gate = asyncio.Event()
    b = batcher(fn, clock, max_batch=32, max_wait_ms=1, max_in_flight=1)
    first = asyncio.ensure_future(b.submit(1))
    await clock.advance(0.001)
    assert fn.batches == [[1]]
    later = [asyncio.ensure_future(b.submit(i)) for i in range(2, 7)]
    await clock.advance(0.010)  # the window is long over, but the only slot is busy
    assert fn.batches == [[1]]
    fn.gate.set()
    await clock.drive(asyncio.gather(first, *later))
    assert fn.batches == [[1], [2, 3, 4, 5, 6]]


async def test_a_failing_item_fails_only_its_own_caller() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=1)
    results = await clock.drive(
        asyncio.gather(b.submit(1), b.submit(-1), b.submit(3), return_exceptions=True)
    )
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and "bad item -1" in str(results[1])
    assert len(fn.batches) == 1


async def test_a_failing_batch_fails_every_caller_in_it_and_nobody_else() -> None:
    clock = FakeClock()
    calls: list[list[int]] = []

    async def flaky(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("model crashed")
        return [i * 10 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(
        flaky, max_batch=3, max_wait_ms=1, clock=clock, sleep=clock.sleep
    )
    results = await clock.drive(
        asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
    )
    assert calls == [[0, 1, 2], [3, 4]]
    assert all(isinstance(r, ConnectionError) for r in results[:3])
    assert results[3:] == [30, 40]
    assert b.stats.failed_batches == 1


async def test_a_batch_function_returning_the_wrong_count_fails_the_batch() -> None:
    clock = FakeClock()

    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    b: MicroBatcher[int, int] = MicroBatcher(short, max_wait_ms=1, clock=clock, sleep=clock.sleep)
    results = await clock.drive(asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True))
    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in results)


async def test_a_cancelled_caller_is_left_out_and_the_others_still_get_answers() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=5)
    keep = asyncio.ensure_future(b.submit(1))
    drop = asyncio.ensure_future(b.submit(2))
    await settle()
    drop.cancel()
    assert await clock.drive(keep) == 2
    assert fn.batches == [[1]]


async def test_close_runs_what_was_submitted_then_refuses_more() -> None:
    clock, fn = FakeClock(), Recorder()
    b = batcher(fn, clock, max_batch=8, max_wait_ms=60_000)
    pending = asyncio.ensure_future(b.submit(5))
    await settle()
    await b.close()  # does not wait the minute-long window
    assert await pending == 10
    with pytest.raises(RuntimeError, match="closed"):
        await b.submit(6)


async def test_the_observer_sees_every_batch_size() -> None:
    clock, fn = FakeClock(), Recorder()
    seen: list[int] = []
    b = batcher(fn, clock, max_batch=3, max_wait_ms=1, on_batch=lambda n, s: seen.append(n))
    await clock.drive(asyncio.gather(*(b.submit(i) for i in range(7))))
    assert seen == [3, 3, 1]


class HashEmbedder:
    """A real `Embedder`: hashed bag-of-words vectors; counts the model calls it gets."""

    model_id = "hash:test"
    dim = 64

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        await asyncio.sleep(0)
        return hashed_embeddings(texts, self.dim)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


async def test_batching_embedder_turns_concurrent_queries_into_one_model_call() -> None:
    inner = HashEmbedder()
    embedder = BatchingEmbedder(inner, max_batch=32, max_wait_ms=5)
    await embedder.start()
    queries = [f"what does function {i % 6} return" for i in range(12)]
    rows = await asyncio.gather(*(embedder.embed([q]) for q in queries))
    assert len(inner.calls) == 1
    assert sorted(inner.calls[0]) == sorted(set(queries))  # repeats embedded once
    for query, row in zip(queries, rows, strict=True):
        assert row.shape == (1, 64)
        np.testing.assert_array_equal(row[0], hashed_embeddings([query], 64)[0])
    assert embedder.stats.batches == 1 and embedder.stats.mean_batch_size == 12
    await embedder.close()
    assert inner.closed


async def test_batching_embedder_passes_multi_text_calls_straight_through() -> None:
    inner = HashEmbedder()
    embedder = BatchingEmbedder(inner)
    await embedder.start()
    out = await embedder.embed(["a b", "c d", "e f"])
    assert out.shape == (3, 64) and inner.calls == [["a b", "c d", "e f"]]
    assert embedder.stats.batches == 0
    assert embedder.model_id == "hash:test" and embedder.count_tokens(["x y z"]) == [3]
    await embedder.close()
