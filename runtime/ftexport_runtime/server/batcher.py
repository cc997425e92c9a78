"""Dynamic micro-batching: requests wait in one bounded queue (counted in texts); a single
worker takes what is queued, waits up to max_wait for more while the batch is under
max_batch texts, and runs one predict call in a worker thread, so the event loop keeps
accepting and answering requests meanwhile. A full queue refuses at once rather than growing.

A job is either texts for a batch function (jobs of the same function share model calls) or a
call that runs alone (a generation: `enqueue`/`call`); both wait in the same queue, in order,
and run on the same one worker thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class _Job:
    texts: list[str]  # a batched job's texts (empty for a call)
    future: asyncio.Future[Any]
    fn: Callable[[list[str]], list[Any]] | None = None  # the batch function; jobs of the same one share a call
    call: Callable[[], Any] | None = None  # a job that runs alone: call() in the worker thread
    size: int = 0  # what it counts for in the queue (texts)


@dataclass
class Stats:
    requests: int = 0  # accepted into the queue
    texts: int = 0
    batches: int = 0  # model calls (Predictor.predict_batch calls)
    rejected: int = 0  # 503s: queue full or shutting down
    largest_batch: int = 0


@dataclass
class MicroBatcher:
    """Collects queued requests into batches and runs each batch in one worker thread.

    predict: texts -> one JSON-ready answer per text (runs in the worker thread); the batch
    function of `submit(texts)` when it names none.
    """

    predict: Callable[[list[str]], list[Any]] | None
    max_batch: int
    max_wait_s: float
    capacity: int  # texts
    batching: bool = True
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: onnxruntime already spreads one call over every core it is given, so a
        # second concurrent call would only fight the first for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftexport-predict")

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="ftexport-batcher")

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, then stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str], fn: Callable[[list[str]], list[Any]] | None = None) -> list[Any]:
        """Answers for `texts` from fn (default: predict), batched with other jobs of fn."""
        batch_fn = fn or self.predict
        assert batch_fn is not None, "submit() needs a batch function"
        return await self._add(_Job(texts, asyncio.get_running_loop().create_future(), fn=batch_fn, size=len(texts)))

    def enqueue(self, call: Callable[[], Any], cost: int = 1) -> asyncio.Future[Any]:
        """Queue call() to run alone in the worker thread, counted as `cost` texts; the future
        of its result. QueueFull / ShuttingDown are raised here, at once."""
        job = _Job([], asyncio.get_running_loop().create_future(), call=call, size=cost)
        self._admit(job)
        return job.future

    async def call(self, call: Callable[[], Any], cost: int = 1) -> Any:
        """call() alone in the worker thread, in its turn in the queue."""
        return await self.enqueue(call, cost)

    async def _add(self, job: _Job) -> Any:
        self._admit(job)
        return await job.future

    def _admit(self, job: _Job) -> None:
        if self._closing:
            self.stats.rejected += 1
            raise ShuttingDown
        if self._queued + job.size > self.capacity:
            self.stats.rejected += 1
            raise QueueFull
        assert self._wakeup is not None, "MicroBatcher.start() was not called (the app's lifespan did not run)"
        self._jobs.append(job)
        self._queued += job.size
        self.stats.requests += 1
        self.stats.texts += job.size
        self._wakeup.set()

    def _pop(self) -> _Job:
        job = self._jobs.popleft()
        self._queued -= job.size
        return job

    def _joins(self, first: _Job, size: int) -> bool:
        """Whether the next queued job can join a batch that starts with `first`."""
        nxt = self._jobs[0]
        return nxt.call is None and nxt.fn is first.fn and size + len(nxt.texts) <= self.max_batch

    async def _next_batch(self) -> list[_Job]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        batch = [self._pop()]  # the first job always goes, even one larger than max_batch
        if not self.batching or batch[0].call is not None:
            return batch
        size = len(batch[0].texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            while self._jobs and self._joins(batch[0], size):
                batch.append(self._pop())
                size += len(batch[-1].texts)
            remaining = deadline - loop.time()
            if self._jobs or size >= self.max_batch or remaining <= 0 or self._closing:
                break  # full, or the next job would overflow it, or time is up
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # A client that went away while queued has a cancelled future: skip its texts.
            batch = [job for job in await self._next_batch() if not job.future.done()]
            if not batch:
                continue
            if batch[0].call is not None:
                await self._run_call(batch[0])
                continue
            texts = [t for job in batch for t in job.texts]
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            try:
                answers = await loop.run_in_executor(self._executor, batch[0].fn, texts)
            except Exception as e:  # noqa: BLE001  # a bug, a broken model, or one request's input: keep serving
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(e)
                    continue
                # One request's texts can fail the whole batch (a text longer than a TensorRT
                # engine takes): each request alone again, so only its own sender gets the error.
                for job in batch:
                    await self._run_alone(job)
                continue
            start = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(answers[start : start + len(job.texts)])
                start += len(job.texts)

    async def _run_alone(self, job: _Job) -> None:
        if not job.future.done():
            assert job.fn is not None
            await self._settle(job, job.fn, job.texts)

    async def _run_call(self, job: _Job) -> None:
        assert job.call is not None
        await self._settle(job, job.call)

    async def _settle(self, job: _Job, fn: Callable[..., Any], *args: Any) -> None:
        """One model call for one job alone: its answer or its error goes to that job's future."""
        self.stats.batches += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except Exception as e:  # noqa: BLE001  # the caller's to report
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(result)
