"""Micro-batching of model calls across concurrent requests.

While a model call runs, newly arriving requests queue up and the next call
takes them all (up to `max_batch`), so throughput grows with concurrency. A lone
request on an idle server is dispatched at once; the collection window is only
waited for while the server is under load (the previous batch held several
requests), so micro-batching costs an idle server no latency: the lone request is handed to the model
thread before `enqueue` returns, so a burst that reaches an idle server in one event-loop turn is served as
that first request alone and then the rest together. Model calls run on one dedicated thread:
they never block the event loop and never race each other for the device. A
CUDA out-of-memory error splits the batch and retries the halves, so one large
batch degrades to smaller ones instead of failing every request in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

import torch

from .metrics import BATCH_SIZE

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("finesearch.batching")


class OutOfMemory(RuntimeError):
    pass


def call_splitting_on_oom(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
    try:
        return fn(items)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) == 1:
            raise OutOfMemory("the device ran out of memory for a single request") from None
        half = len(items) // 2
        log.warning("out of device memory on a batch of %d; retrying as %d + %d", len(items), half,
                    len(items) - half)
        return call_splitting_on_oom(fn, items[:half]) + call_splitting_on_oom(fn, items[half:])


# a batch handed to the executor: its requests with their futures, and the call's own future
Started = tuple[list[tuple[T, asyncio.Future[R]]], asyncio.Future[list[R]]]


class MicroBatcher(Generic[T, R]):
    def __init__(self, name: str, fn: Callable[[list[T]], Sequence[R]], executor: Executor, max_batch: int,
                 window_ms: float) -> None:
        self.name = name
        self.fn = fn
        self.executor = executor
        self.max_batch = max(1, max_batch) if window_ms > 0 else 1
        self.window = window_ms / 1000.0
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._last_batch = 0

    async def submit(self, item: T) -> R:
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue `item`; its future gets the result. An idle batcher hands the item to the executor before
        this returns: no event-loop turn (other requests' Python) passes before the model thread starts."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if self._worker is None or self._worker.done():
            started = None if self._should_wait() else self._dispatch(loop)
            self._worker = loop.create_task(self._drain(started))
        return fut

    def _should_wait(self) -> bool:
        """Under load (the previous batch held several requests) a partial batch waits one window for more."""
        return bool(self.window) and self._last_batch > 1 and len(self._pending) < self.max_batch

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> Started[T, R] | None:
        """The next batch of live requests, handed to the executor now."""
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        batch = [(i, f) for i, f in batch if not f.cancelled()]
        if not batch:
            return None
        BATCH_SIZE.labels(stage=self.name).observe(len(batch))
        self._last_batch = len(batch)
        items = [i for i, _ in batch]
        try:
            return batch, loop.run_in_executor(self.executor, call_splitting_on_oom, self.fn, items)
        except Exception as exc:  # the executor is shut down (the engine closing): fail these, do not hang them
            for _, f in batch:
                f.set_exception(exc)
            return None

    async def _drain(self, started: Started[T, R] | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if started is not None:
                await self._settle(*started)
            if not self._pending:
                return
            if self._should_wait():
                await asyncio.sleep(self.window)
            started = self._dispatch(loop)

    @staticmethod
    async def _settle(batch: list[tuple[T, asyncio.Future[R]]], running: asyncio.Future[list[R]]) -> None:
        try:
            results = await running
        except Exception as exc:
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc)
            return
        for (_, f), r in zip(batch, results, strict=True):
            if not f.done():
                f.set_result(r)
