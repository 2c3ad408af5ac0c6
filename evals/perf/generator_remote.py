"""Images/s and latency through the images API (Ray Serve with 1 and 2 replicas, and our app
without Ray) against the in-process worker, at concurrency 1, 8 and 32, in one run.

    python -m evals.perf.generator_remote               # tiny klein on CPU, Ray Serve included
    python -m evals.perf.generator_remote --full-klein  # klein-4B architecture, random weights, CUDA
    python -m evals.perf.generator_remote --no-ray      # only in-process vs the images app under uvicorn

``concurrency`` threads each ask for ``--per-thread`` text-to-image generations one after another
(as concurrent graph runs do), every request with its own prompt and seed at the same size and
steps, so batching can join them. Backends, all over the same model:

  in-process   ``tools.generator.worker`` pool of one pipeline (the embedded default): the baseline
  api-no-ray   the images app (``tools.generator.serve_app``) under uvicorn on a thread of this
               process over that same pool, reached through ``ImagesAPIGenerator`` over HTTP
               (client and server share this process and its GIL: a conservative figure)
  ray-1/ray-2  ``tools.generator.ray_serve`` on a local Ray cluster, 1 and 2 replicas
               (``--ray-replicas``), batched by Ray Serve's ``@serve.batch``; ``ray-N-worker``
               the same with our worker thread as the replica's batcher (``--ray-batchers
               serve,worker``). Replicas load the model from a folder themselves: the tiny
               one is built; with ``--full-klein`` the random-weight pipeline is saved first
               (``save_pretrained``, ~16 GB of bf16 under ``--save-dir``), so every backend serves
               the very same weights

Each round measures every backend at every level in turn (the medians of ``--rounds`` are
reported), so load from elsewhere on the machine falls on all of them alike. Prints images/s,
p50/p95 latency and each backend's images/s as a ratio of in-process at the same concurrency.
On CPU each Ray replica gets one CPU (one torch thread), so the in-process pipeline is also run
with one thread: ray-2 uses two CPUs against one, which is the point of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from PIL import Image

LEVELS = (1, 8, 32)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full-klein",
        action="store_true",
        help="klein-4B architecture with random weights on CUDA (default: tiny klein on CPU)",
    )
    parser.add_argument("--model", default=None, help="a saved pipeline folder instead (Ray replicas load it)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 1024 full)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 2 tiny, 4 full)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels")
    parser.add_argument("--per-thread", type=int, default=2, help="images each thread asks for")
    parser.add_argument("--max-batch", type=int, default=4, help="largest batch (worker and replicas)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all backends (medians reported)")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray Serve backends")
    parser.add_argument(
        "--ray-replicas",
        default="1,2",
        help="Ray Serve applications to measure, by replica count (on one GPU each replica asks for 1/N of it)",
    )
    parser.add_argument(
        "--ray-batchers",
        default="serve",
        help="replica batchers to measure (serve, worker; comma-separated): one Ray application each",
    )
    parser.add_argument(
        "--save-dir",
        default=None,
        help="with --full-klein and Ray: where the random-weight pipeline is saved for the replicas "
        "(default: a temp folder)",
    )
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    return parser


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation (q in [0, 1]).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(
    run: Callable[[dict], Image.Image], concurrency: int, per_thread: int, size: int, steps: int, offset: int
) -> dict[str, float]:
    """``concurrency`` threads, each running ``per_thread`` requests in turn; throughput and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(index: int) -> None:
        for turn in range(per_thread):
            number = offset + index * per_thread + turn
            request = dict(
                prompt=f"a paper crane, view {number}", seed=number, width=size, height=size, steps=steps, guidance=1.0
            )
            began = time.perf_counter()
            try:
                image = run(request)
            except BaseException as exc:  # noqa: BLE001 -- reported after the threads end
                errors.append(exc)
                return
            assert image.size == (size, size)
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    return {
        "images_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "images": len(latencies),
    }


def _pipeline(args: argparse.Namespace, workdir: Path) -> tuple[Any, str, str, str]:
    """(pipe, model name/folder, device, dtype)."""
    import torch

    from tools.generator import diffusion

    if args.model:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return diffusion.load_pipeline(args.model, device), args.model, device, "auto"
    if args.full_klein:
        from evals.perf.generator import build_full_klein_pipeline

        name = "black-forest-labs/FLUX.2-klein-4B"
        return (
            diffusion.register_pipeline(name, build_full_klein_pipeline("cuda"), "cuda", "bfloat16"),
            name,
            "cuda",
            "bfloat16",
        )
    from tools.doubles.tiny_klein import save_tiny_klein

    torch.set_num_threads(1)  # as each one-CPU Ray replica (see the module docstring)
    folder = str(save_tiny_klein(workdir / "tiny-klein"))
    return diffusion.load_pipeline(folder, "cpu", "float32"), folder, "cpu", "float32"


def _saved_full_klein(pipe: Any, folder: Path) -> str:
    """The random-weight pipeline written as an ordinary diffusers folder, for Ray replicas."""
    began = time.perf_counter()
    print(f"saving the random-weight klein-4B to {folder} for the Ray replicas ...", flush=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"saved in {time.perf_counter() - began:.0f} s", flush=True)
    return str(folder)


def _ray_backends(
    stack: contextlib.ExitStack,
    model: str,
    device: str,
    dtype: str,
    max_batch: int,
    gpu: bool,
    replica_counts: list[int],
    batchers: list[str],
) -> dict[str, Callable[[dict], Image.Image]]:
    """Ray Serve applications with each replica count, side by side on one local cluster (under
    /r1, /r2, ...), so every round measures them under the same machine load. On a machine with
    fewer GPUs than replicas, each replica asks for a share of one (Ray's fractional GPUs)."""
    import os
    import socket

    import ray
    from ray import serve

    from tools.generator.images_api import ImagesAPIGenerator
    from tools.generator.ray_serve import generator_application

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        address="local",
        num_cpus=max(3, os.cpu_count() or 3),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    stack.callback(ray.shutdown)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    stack.callback(serve.shutdown)
    runs = {}
    gpus = int(ray.cluster_resources().get("GPU", 0)) if gpu else 0
    apps = [(replicas, batcher) for replicas in replica_counts for batcher in batchers]
    per_gpu = sum(replicas for replicas, _ in apps)  # every application's replicas share the GPUs
    for replicas, batcher in apps:
        share = (1.0 if per_gpu <= gpus else round(gpus / per_gpu, 3)) if gpu else 0
        name = f"ray-{replicas}" + ("" if batcher == "serve" else f"-{batcher}")
        print(f"starting {name}: {replicas} replica(s), {share} GPU each, {batcher} batcher ...", flush=True)
        serve.run(
            generator_application(
                model,
                num_replicas=replicas,
                gpus_per_replica=share,
                batcher=batcher,
                cpus_per_replica=1,
                max_batch=max_batch,
                device=device,
                dtype=dtype,
            ),
            name=name,
            route_prefix=f"/{name}",
        )
        client = ImagesAPIGenerator(f"http://127.0.0.1:{port}/{name}/v1", model, max_concurrency=64)
        stack.callback(client.close)
        runs[name] = client.run
    return runs


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from tools.logs import configure_logging

    configure_logging(logging.WARNING)
    from tools.generator.images_api import ImagesAPIGenerator
    from tools.generator.serve_app import BackgroundServer, images_app, local_generate
    from tools.generator.worker import GeneratorPool, GeneratorWorker

    size = args.size or (1024 if args.full_klein else 64)
    steps = args.steps or (4 if args.full_klein else 2)
    levels = [int(level) for level in args.levels.split(",")]
    rounds: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        pipe, model, device, dtype = _pipeline(args, Path(tmp))
        gpu = device.startswith("cuda")
        pool = GeneratorPool([GeneratorWorker(pipe, max_batch=args.max_batch)])
        server = stack.enter_context(BackgroundServer(images_app(local_generate(pool), model=model, spec=pool.spec)))
        client = ImagesAPIGenerator(server.base_url, model, max_concurrency=64, spec=pool.spec)
        stack.callback(client.close)
        backends: dict[str, Callable[[dict], Image.Image]] = {"in-process": pool.run, "api-no-ray": client.run}
        if args.no_ray:
            pass
        else:
            replica_counts = [int(count) for count in args.ray_replicas.split(",") if count.strip()]
            if gpu and not args.model:  # the replicas load a folder: write the random weights once
                model = _saved_full_klein(pipe, Path(args.save_dir or tmp) / "klein-4B-random")
            batchers = [batcher.strip() for batcher in args.ray_batchers.split(",") if batcher.strip()]
            backends.update(_ray_backends(stack, model, device, dtype, args.max_batch, gpu, replica_counts, batchers))
        for name, run in backends.items():  # kernels, connections, batch shapes, every replica
            measure(run, 8, 1, size, steps, offset=10**6)
        # Rounds interleave the backends, so a busy neighbour on the machine hurts all alike.
        for round_number in range(args.rounds):
            for level in levels:
                for name, run in backends.items():
                    figures = measure(
                        run, level, args.per_thread, size, steps, offset=10**5 * round_number + 1000 * level
                    )
                    rounds.setdefault(name, {}).setdefault(level, []).append(figures)

    results = {
        name: {
            level: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for level, runs in by_level.items()
        }
        for name, by_level in rounds.items()
    }
    print(f"{size}x{size}, {steps} steps, {'GPU' if gpu else 'CPU'}; medians of {args.rounds} rounds")
    for name, by_level in results.items():
        for level, figures in by_level.items():
            ratio = figures["images_per_s"] / results["in-process"][level]["images_per_s"]
            print(
                f"{name:<12} c={level:<3} {figures['images_per_s']:7.2f} images/s ({ratio:.2f}x in-process)  "
                f"p50 {figures['p50_ms']:8.1f} ms  p95 {figures['p95_ms']:8.1f} ms"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"size": size, "steps": steps, "gpu": gpu, "rounds": args.rounds, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
