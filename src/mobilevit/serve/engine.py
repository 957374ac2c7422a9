"""Dynamic batching: requests for one model wait in a queue; a worker runs them together in one forward pass.

The event loop never runs the model nor decodes images: decoding and preprocessing go to a shared thread pool, the
forward pass to the model's own single thread (one forward at a time per model; PyTorch, onnxruntime or OpenVINO uses
the cores inside it).
A request is admitted (takes a place in the queue) only once its body has arrived, so slow uploads never hold places.
The worker takes the first waiting request, waits at most ``max_wait_ms`` for up to ``max_batch_size`` requests
(only while more admitted requests are still being decoded), then runs the batch; each request's own ``finish`` turns
its row of the logits into its answer (a classifier's top-k with the request's ``top_k`` and ``function_to_apply``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..runner import Runner, all_finite, output_rows

logger = logging.getLogger(__name__)


class OverloadedError(Exception):
    """The model's queue is full, the model is not loaded yet, or the server is shutting down: retry later."""


def pin_torch_threads(threads: int) -> None:
    """Give the calling thread ``threads`` PyTorch intra-op threads, for good.

    PyTorch sets a thread's OpenMP team size on its first parallel call from the count *any* thread set last, so the
    thread's set-up is forced first and the count set after it.
    """
    torch.get_num_threads()  # the per-thread set-up, which would otherwise run later and overwrite the count
    torch.set_num_threads(threads)


@dataclass
class _Job:
    """One request waiting for the model."""

    image: Tensor  # [3, H, W], preprocessed
    finish: Callable[[Tensor], Any]  # this request's row of the logits -> its answer (in the model's thread)
    future: asyncio.Future[Any] = field(repr=False)


class BatchEngine:
    """The queue, the batching worker and the loaded predictor of one served model.

    Args:
        name: the served name (for logs and metrics).
        load: builds the :class:`~mobilevit.runner.Runner` (called once, in the model thread).
        max_batch_size: requests per forward pass.
        max_wait_ms: longest wait for a batch to fill after its first request arrived.
        queue_size: requests admitted at once (decoding, queued or running); more raise :class:`OverloadedError`.
        on_batch: called with each batch size (metrics).
    """

    def __init__(
        self,
        name: str,
        load: Callable[[], Runner],
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._load = load
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._on_batch = on_batch or (lambda n: None)
        self.predictor: Runner | None = None
        self.error: str | None = None  # why loading failed
        self.failure: str | None = None  # why the model's latest answer could not be made (non-finite outputs)
        self.admitted = 0  # requests between admit() and release()
        self._pending: deque[_Job] = deque()
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        # the model's thread keeps the process's thread count at start-up, whatever the decode threads set (create_app)
        self._model_thread = ThreadPoolExecutor(
            1, thread_name_prefix=f"model-{name}", initializer=pin_torch_threads, initargs=(torch.get_num_threads(),)
        )
        self._worker: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Loaded, not shutting down, and its latest answer was made (see :meth:`answered`)."""
        return self.predictor is not None and not self._closing and self.failure is None

    def answered(self, failure: str | None = None) -> None:
        """Record how the model's latest answer went: ``failure`` says why none could be made from its outputs
        (``/health`` reports the model failing), ``None`` that one was (a finite answer clears the failure)."""
        self.failure = failure

    async def start(self) -> None:
        """Load the model in its thread, warm it up with one forward pass, then start the batching worker."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            self.predictor = await loop.run_in_executor(self._model_thread, self._load_and_warm_up)
        except Exception as err:  # reported by /health; the caller decides whether to stop the server
            self.error = f"{type(err).__name__}: {err}"
            logger.error("%s: loading failed: %s", self.name, self.error)
            raise
        logger.info("%s: loaded in %.1f s", self.name, time.perf_counter() - t0)
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    def _load_and_warm_up(self) -> Runner:
        predictor = self._load()
        if not predictor.runtime.uses_torch_threads:  # the runtime has its own threads; PyTorch only stacks and scores
            pin_torch_threads(1)
        example = predictor.transform(Image.new("RGB", (64, 64)))
        outputs = predictor.forward(example[None])  # the first forward is slow (allocations); do it before traffic
        if not all_finite(outputs):  # broken weights: /health says so before any request
            logger.error("%s: the warm-up forward pass gave non-finite values (NaN or infinity)", self.name)
            self.answered("the model produced non-finite values (NaN or infinity) for a black image at start-up")
        return predictor

    def check_open(self) -> None:
        """Raise :class:`OverloadedError` when the model takes no requests now (not loaded yet, or shutting down)."""
        if self._closing:
            raise OverloadedError("the server is shutting down")
        if self.predictor is None:
            raise OverloadedError(f"model {self.name} is not loaded yet" if self.error is None else self.error)

    def admit(self) -> None:
        """Reserve a place for a new request (its body complete) or raise :class:`OverloadedError`; pair with
        :meth:`release`."""
        self.check_open()
        if self.admitted >= self.queue_size:
            raise OverloadedError(f"model {self.name} is busy: {self.admitted} requests in its queue")
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    async def submit(self, image: Tensor, finish: Callable[[Tensor], Any]) -> Any:
        """Queue one preprocessed image (after :meth:`admit`) and wait for ``finish`` of its row of the logits (run in
        the model's thread: keep it light, e.g. a top-k)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(image, finish, future))
        self._nonempty.set()
        if len(self._pending) >= self.max_batch_size:
            self._full.set()
        return await future  # cancelled by the caller's timeout: the worker skips a done future

    async def _next_batch(self) -> list[_Job]:
        await self._nonempty.wait()
        # Wait for the batch to fill only while more admitted requests are on their way (being decoded):
        # a lone request runs at once instead of paying max_wait_ms.
        coming = self.admitted > len(self._pending)
        if coming and len(self._pending) < self.max_batch_size and self.max_wait > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.max_wait)
        batch = []
        while self._pending and len(batch) < self.max_batch_size:
            job = self._pending.popleft()
            if not job.future.done():  # timed out or the client went away
                batch.append(job)
        if not self._pending:
            self._nonempty.clear()
            self._full.clear()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self._on_batch(len(batch))
            try:
                answers = await loop.run_in_executor(self._model_thread, self._forward, batch)
            except Exception as err:
                logger.exception("%s: batch of %d failed", self.name, len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, (answer, error) in zip(batch, answers, strict=True):
                if job.future.done():
                    continue
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(answer)

    def _forward(self, batch: list[_Job]) -> list[tuple[Any, Exception | None]]:
        """Model thread: one forward pass of the whole batch, then each request's own ``finish`` of its row:
        ``(answer, None)``, or ``(None, error)`` for a row ``finish`` refused (non-finite outputs), which fails that
        request only."""
        assert self.predictor is not None
        outputs = self.predictor.forward(torch.stack([job.image for job in batch]))  # [B, num_classes(, h, w)]
        answers: list[tuple[Any, Exception | None]] = []
        for row, job in zip(output_rows(outputs), batch, strict=True):
            try:
                answers.append((job.finish(row), None))
            except Exception as err:  # the request's handler reports it
                answers.append((None, err))
        return answers

    async def stop(self, drain_timeout: float) -> None:
        """Refuse new requests, let the queued ones finish (up to ``drain_timeout`` s), then stop the worker."""
        self._closing = True
        deadline = time.monotonic() + drain_timeout
        while (self._pending or self.admitted) and time.monotonic() < deadline and self._worker is not None:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(OverloadedError("the server is shutting down"))
        self._pending.clear()
        self._model_thread.shutdown(wait=True)
