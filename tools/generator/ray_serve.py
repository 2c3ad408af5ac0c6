"""Our generator as a Ray Serve application: one replica per GPU, on any number of machines.

Each replica loads the pipeline once (any family of ``tools.generator.models``, with LoRA,
offload and the klein speedups, through ``tools.generator.diffusion.load_pipeline``) and serves
the images API of ``tools.generator.serve_app`` as its FastAPI ingress. Concurrent requests of a
replica are batched, by one of two batchers (``batcher``):

- ``serve`` (the default): Ray Serve's own ``@serve.batch`` into ``diffusion.generate_batch``
  (which runs compatible ones as one pipeline call), so Ray is the queue and the batcher. It
  closes a batch on a timer (``batch_wait_s``) or when it is full, not when the GPU frees.
- ``worker``: our in-process worker thread (``tools.generator.worker``), the one the embedded
  pool uses: it takes whatever has queued the moment the pipeline is free, so batches fill while
  the GPU works. Placement, replicas, health and restarts stay Ray Serve's.

Placement is Ray's: each replica asks for ``gpus_per_replica`` GPUs in ``ray_actor_options``,
so on a cluster made with ``ray start`` the replicas land one per GPU across its nodes. Health
and readiness are Ray Serve's: a replica is ready once ``__init__`` (the pipeline load) has
returned, and ``check_health`` checks that the pipeline is loaded and, with the ``worker``
batcher, that the worker thread still runs (``check_replica``); ``serve status`` and the
dashboard show both. A replica that dies is restarted by the Serve controller; requests it
held fail, and the client (``tools.generator.images_api``) retries them on a live replica.

Ray is imported by this module; the rest of the product never imports it, so an installation
without the ``serve`` extra only misses this command.

Also usable with Ray's own CLI: ``serve run tools.generator.ray_serve:app_builder model=PATH
num_replicas=2``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from tools.generator import diffusion
from tools.generator import models as generator_models
from tools.generator.serve_app import images_app, local_generate

log = logging.getLogger(__name__)

DEFAULT_BATCH_WAIT_S = 0.003  # as tools.generator.worker.GATHER_S: requests arrive one by one
BATCHERS = ("serve", "worker")


@serve.deployment(name="generator")
@serve.ingress()
class GeneratorDeployment:
    """One replica: the pipeline on this replica's GPU behind the images API."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        lora: str | None = None,
        lora_scale: float = 1.0,
        offload: str = "none",
        speedups: str = "off",
        compile_cache: str | None = None,
        max_batch: int = 4,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        batcher: str = "serve",
    ) -> None:
        if batcher not in BATCHERS:
            raise ValueError(f"batcher={batcher!r} must be one of {', '.join(BATCHERS)}")
        self.model = model
        self.batcher = batcher
        self.pipe = diffusion.load_pipeline(
            model,
            device,
            dtype,
            lora=lora,
            lora_scale=lora_scale,
            offload=offload,
            speedups=speedups,
            compile_cache=compile_cache,
        )
        self.spec = generator_models.spec_for_pipeline(self.pipe)
        self.pool = None
        if batcher == "worker":
            from tools.generator.worker import GeneratorPool, GeneratorWorker

            self.pool = GeneratorPool([GeneratorWorker(self.pipe, max_batch=max_batch)])
        else:
            self.generate_many.set_max_batch_size(max_batch)
            self.generate_many.set_batch_wait_timeout_s(batch_wait_s)
        log.info(
            "generator replica ready: %s (%s), batches of up to %d (%s batcher)",
            model,
            self.spec.family,
            max_batch,
            batcher,
        )

    # Two batches in flight: while one runs on the GPU, the next is gathered and waits on the
    # pipeline's call lock (diffusion.generate_batch runs one call per pipeline at a time), so it
    # starts the moment the GPU is free. With one, the next batch started only after the event
    # loop had handed out the last batch's answers (JSON of 4 MB PNGs each): on one H200 at
    # concurrency 8, 0.86x the in-process images/s with one batch in flight.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S, max_concurrent_batches=2)
    async def generate_many(self, requests: list[dict[str, Any]]) -> list[Any]:
        """The requests Ray Serve gathered, as one ``generate_batch`` call on a thread; a request
        that fails gets its own exception (the others their images), not the whole batch."""
        results, _sizes = await asyncio.to_thread(diffusion.generate_isolating_failures, self.pipe, requests)
        return results

    async def generate_one(self, request: dict[str, Any]) -> Any:
        """One request through the batch: its image, or its own failure raised."""
        result = await self.generate_many(request)
        if isinstance(result, Exception):
            raise result
        return result

    def __serve_build_asgi_app__(self) -> Any:
        generate = self.generate_one if self.pool is None else local_generate(self.pool)
        return images_app(generate, model=self.model, spec=self.spec)

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising marks the replica unhealthy (restarted)."""
        check_replica(self.pipe, self.pool)


def check_replica(pipe: Any, pool: Any = None) -> None:
    """Raise when a replica cannot generate: its pipeline is not loaded, or (``worker`` batcher)
    a worker thread of its pool has stopped, which would leave every request queued for ever."""
    if pipe is None or getattr(pipe, "transformer", None) is None:
        raise RuntimeError("the generator pipeline is not loaded")
    stopped = [] if pool is None else [index for index, worker in enumerate(pool.workers) if not worker.alive]
    if stopped:
        raise RuntimeError(f"the replica's generator worker thread {stopped} stopped; Ray Serve restarts the replica")


def parse_autoscale(value: str) -> tuple[int, int]:
    """``MIN:MAX`` replicas for Ray Serve's autoscaler.

    >>> parse_autoscale("1:4")
    (1, 4)
    """
    try:
        low, high = (int(part) for part in value.split(":"))
    except ValueError:
        raise ValueError(f"--autoscale {value!r} must be MIN:MAX, e.g. 1:4") from None
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"--autoscale {value!r} needs 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def generator_application(
    model: str,
    *,
    num_replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    gpus_per_replica: float = 1.0,
    cpus_per_replica: float = 1.0,
    max_batch: int = 4,
    max_ongoing_requests: int = 64,
    **load: Any,
) -> Any:
    """The bound Ray Serve application (``serve.run`` it). ``load``: ``GeneratorDeployment``'s
    pipeline settings (device, dtype, lora, lora_scale, offload, speedups, compile_cache,
    batch_wait_s, batcher)."""
    if load.get("batcher", "serve") not in BATCHERS:
        raise ValueError(f"batcher={load['batcher']!r} must be one of {', '.join(BATCHERS)}")
    if num_replicas < 1 or max_batch < 1 or gpus_per_replica < 0 or cpus_per_replica < 0:
        raise ValueError("num_replicas and max_batch must be >= 1, gpus/cpus per replica >= 0")
    options: dict[str, Any] = dict(
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        max_ongoing_requests=max_ongoing_requests,
    )
    if autoscale is not None:
        options["autoscaling_config"] = {
            "min_replicas": autoscale[0],
            "max_replicas": autoscale[1],
            "target_ongoing_requests": max_batch,
        }
    else:
        options["num_replicas"] = num_replicas
    return GeneratorDeployment.options(**options).bind(model, max_batch=max_batch, **load)


def app_builder(args: dict[str, str]) -> Any:
    """For Ray's CLI: ``serve run tools.generator.ray_serve:app_builder model=M num_replicas=2``."""
    args = dict(args)
    model = args.pop("model")
    numbers = {"num_replicas": int, "max_batch": int, "gpus_per_replica": float, "cpus_per_replica": float}
    kwargs: dict[str, Any] = {key: numbers[key](args.pop(key)) for key in list(args) if key in numbers}
    if "autoscale" in args:
        kwargs["autoscale"] = parse_autoscale(args.pop("autoscale"))
    return generator_application(model, **kwargs, **args)
