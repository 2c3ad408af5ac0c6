"""One GPU, one pipeline, one queue: how concurrent runs in a process share the generator.

Every graph run in a process (threads of ``interleave batch``, async runs of an embedding
application, reward regenerations during training) sends its generations to the worker of its
pipeline instead of calling the pipeline itself. The worker owns the pipeline on one thread,
takes whatever requests are waiting, and runs them through ``tools.generator.diffusion.generate_batch``,
which puts compatible ones (same size, steps, guidance and input images) into one pipeline call.
So nothing ever loads a second copy of the weights, the GPU is never asked to run two pipeline
calls at once, and queued work is batched instead of waiting in line.

Per-denoising-step progress is handed back to the caller's thread (``run``), so LangGraph's stream
writer is only ever called from the node that asked.

Batching changes float rounding a little (on CPU at most 1 grey level, in bf16 up to 6): an image is
reproduced bit for bit when it is generated in a batch of the same composition, e.g. alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tools.generator import diffusion


# How long the worker waits for more requests to join a batch once one arrives. Short: a graph
# run's next request comes only after its critic has answered, so waiting longer rarely helps.
GATHER_S = 0.003


@dataclass
class _Job:
    request: dict[str, Any]
    future: Future = field(default_factory=Future)


def run_with_progress(
    submit: Callable[[dict[str, Any]], Future], request: dict[str, Any], on_step: Callable[[int, int], None] | None
) -> Image.Image:
    """Submit a request, relay its per-step progress to this thread, and return its image."""
    progress: queue.SimpleQueue = queue.SimpleQueue()
    future = submit({**request, "on_step": lambda done, total: progress.put((done, total))})
    future.add_done_callback(lambda _: progress.put(None))  # wakes this thread at once
    while (item := progress.get()) is not None:
        if on_step is not None:
            on_step(*item)
    return future.result()


class GeneratorWorker:
    """Runs every generation for one pipeline on one thread, batching what is queued."""

    def __init__(self, pipe: Any, *, max_batch: int = 4, gather_s: float = GATHER_S) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        self.pipe = pipe
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.calls = 0  # pipeline batches run (for benchmarks and tests)
        self.batch_sizes: list[int] = []
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._outstanding = 0
        self._load_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="generator-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker's thread still takes requests (False once closed or crashed)."""
        return self._thread.is_alive()

    def submit(self, request: dict[str, Any]) -> Future:
        """Queue one request (the keyword arguments of ``diffusion.generate``); a Future of the image."""
        if not self.alive:
            raise RuntimeError("the generator worker was closed")
        job = _Job(dict(request))
        with self._load_lock:
            self._outstanding += 1
        job.future.add_done_callback(self._finished)
        self._jobs.put(job)
        return job.future

    def _finished(self, _future: Future) -> None:
        with self._load_lock:
            self._outstanding -= 1

    def run(self, request: dict[str, Any], on_step: Callable[[int, int], None] | None = None) -> Image.Image:
        """Generate one image and wait for it, calling ``on_step(done, total)`` on this thread."""
        return run_with_progress(self.submit, request, on_step)

    @property
    def load(self) -> int:
        """Requests submitted and not finished yet (queued or running)."""
        with self._load_lock:
            return self._outstanding

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` plus whatever arrives within the gather window, up to ``max_batch``."""
        jobs, closing = [first], False
        while len(jobs) < self.max_batch:
            try:
                job = self._jobs.get(timeout=self.gather_s)
            except queue.Empty:
                break
            if job is None:
                closing = True
                break
            jobs.append(job)
        return jobs, closing

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs, closing = self._take_batch(first)
            self._run(jobs)
            if closing:
                return

    def _run(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        results, sizes = diffusion.generate_isolating_failures(self.pipe, [job.request for job in live])
        self.calls += len(sizes)
        self.batch_sizes.extend(sizes)
        for job, result in zip(live, results):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


_workers: dict[int, GeneratorWorker] = {}
_workers_lock = threading.Lock()


def worker_for(pipe: Any, max_batch: int = 4) -> GeneratorWorker:
    """The one worker of a loaded pipeline (created on first use; ``max_batch`` of the first caller)."""
    with _workers_lock:
        worker = _workers.get(id(pipe))
        if worker is None or not worker.alive:
            worker = _workers[id(pipe)] = GeneratorWorker(pipe, max_batch=max_batch)
        return worker


class GeneratorPool:
    """One worker per GPU behind one entry point: each request goes to the least-loaded worker.

    Concurrent runs and reward regenerations use it exactly like a single worker; with one
    pipeline it is that pipeline's worker and nothing more.
    """

    def __init__(self, workers: list[GeneratorWorker]) -> None:
        if not workers:
            raise ValueError("a generator pool needs at least one worker")
        self.workers = workers
        self._choose = threading.Lock()

    @property
    def pipe(self) -> Any:
        return self.workers[0].pipe

    @property
    def spec(self) -> Any:
        """The model family of the pipelines (``tools.generator.models.ModelSpec``), as the remote
        backend (``tools.generator.images_api``) has it, so callers need not know which they hold."""
        from tools.generator.models import spec_for_pipeline

        return spec_for_pipeline(self.pipe)

    def generate_batch(self, requests: list[dict[str, Any]]) -> list[Image.Image]:
        """Every request at once through the workers (batched as they see fit), images in order."""
        futures = [self.submit(request) for request in requests]
        return [future.result() for future in futures]

    def submit(self, request: dict[str, Any]) -> Future:
        with self._choose:  # pick and enqueue together, so two callers never both see "idle"
            worker = min(self.workers, key=lambda w: w.load)
            return worker.submit(request)

    def run(self, request: dict[str, Any], on_step: Callable[[int, int], None] | None = None) -> Image.Image:
        return run_with_progress(self.submit, request, on_step)


def pool_for(pipes: list[Any], max_batch: int = 4) -> GeneratorPool:
    """The pool over the shared workers of these pipelines (one pipeline per device)."""
    return GeneratorPool([worker_for(pipe, max_batch) for pipe in pipes])


def generator_devices(device: str) -> list[str]:
    """The devices a ``device`` setting names: one device, ``all`` (every visible GPU, else the
    CPU) or a comma-separated list such as ``cuda:0,cuda:1``.

    >>> generator_devices("cuda:0, cuda:1"), generator_devices("cpu")
    (['cuda:0', 'cuda:1'], ['cpu'])
    """
    if device == "all":
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    names = [part.strip() for part in device.split(",") if part.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"device={device!r} names a device twice; list each GPU once")
    return names
