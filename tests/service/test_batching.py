from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.batching import MicroBatcher, OutOfMemory, call_splitting_on_oom


def test_concurrent_requests_share_model_calls_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher("t", square, ThreadPoolExecutor(1), max_batch=8, window_ms=5)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * i for i in range(20)]
    assert max(len(c) for c in calls) > 1 and all(len(c) <= 8 for c in calls)
    assert sorted(i for c in calls for i in c) == list(range(20))


def test_a_lone_request_is_not_delayed_and_off_means_one_per_call() -> None:
    calls: list[list[int]] = []

    def ident(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    async def main() -> None:
        off = MicroBatcher("t", ident, ThreadPoolExecutor(1), max_batch=8, window_ms=0)
        await asyncio.gather(*(off.submit(i) for i in range(5)))

    asyncio.run(main())
    assert all(len(c) == 1 for c in calls)


def test_errors_reach_every_request_of_the_batch() -> None:
    def boom(items: list[int]) -> list[int]:
        raise ValueError("model failed")

    async def main() -> list[object]:
        b = MicroBatcher("t", boom, ThreadPoolExecutor(1), max_batch=4, window_ms=2)
        return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))


def test_out_of_memory_splits_the_batch_and_retries() -> None:
    seen: list[int] = []

    def picky(items: list[int]) -> list[int]:
        seen.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [i + 1 for i in items]

    assert call_splitting_on_oom(picky, list(range(8))) == [i + 1 for i in range(8)]
    assert seen[0] == 8 and max(seen[1:]) <= 4

    def never(items: list[int]) -> list[int]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemory, match="single request"):
        call_splitting_on_oom(never, [1, 2])


def test_an_idle_batcher_starts_the_call_before_enqueue_returns_and_survives_a_cancelled_caller() -> None:
    """A lone request reaches the model thread without waiting for an event-loop turn (the loop may be
    busy with other requests' Python); a caller that gives up cancels its future, and the batcher still
    serves the next request."""
    started = threading.Event()

    def slow(items: list[int]) -> list[int]:
        started.set()
        return [i + 1 for i in items]

    async def main() -> int:
        b = MicroBatcher("t", slow, ThreadPoolExecutor(1), max_batch=4, window_ms=2)
        fut = b.enqueue(1)
        assert started.wait(5), "the call was not handed to the executor by enqueue itself"
        fut.cancel()
        await asyncio.sleep(0.01)
        return await b.submit(2)

    assert asyncio.run(main()) == 3


def test_a_batch_the_executor_refuses_fails_its_requests_instead_of_hanging_them() -> None:
    """After the engine closed its model thread a late request gets the executor's error, not a hang."""
    pool = ThreadPoolExecutor(1)
    pool.shutdown()

    async def main() -> None:
        b = MicroBatcher("t", lambda items: items, pool, max_batch=4, window_ms=2)
        with pytest.raises(RuntimeError, match="shutdown"):
            await asyncio.wait_for(b.submit(1), 5)

    asyncio.run(main())
