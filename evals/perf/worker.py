"""Images per second through the shared generator worker at concurrency 1, 4 and 8.

    python -m evals.perf.worker            # full FLUX.2-klein-4B architecture, random weights, CUDA
    python -m evals.perf.worker --tiny     # tiny pipeline on CPU (smoke test)
    python -m evals.perf.worker --devices cuda:0,cuda:1   # scaling over GPUs (issue #9)

``concurrency`` threads each ask for ``--per-thread`` text-to-image generations through
``tools.generator.worker`` (as concurrent graph runs do), all with the same size and steps, so
the worker may batch them (up to ``--max-batch``). The baseline, measured in the same process on
the same pipeline, is one thread calling the pipeline directly, one image after another.
Prints images/s, the ratio to the baseline and the batch sizes the worker formed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from tools.generator import diffusion
from tools.generator.worker import GeneratorWorker


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random pipeline on CPU")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 tiny)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--per-thread", type=int, default=4, help="images each thread asks for")
    parser.add_argument("--max-batch", type=int, default=4, help="worker's largest batch")
    parser.add_argument("--levels", default="1,4,8", help="concurrency levels (default 1,4,8)")
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated GPUs: also measure a pool with one pipeline per GPU "
        "(least-loaded dispatch) at each level, against one GPU",
    )
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    return parser


def build(tiny: bool, device: str = "cuda"):
    if tiny:
        from tools.doubles.tiny_klein import build_tiny_klein_pipeline

        return build_tiny_klein_pipeline()
    from evals.perf.generator import build_full_klein_pipeline

    return build_full_klein_pipeline(device)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    size = args.size or (64 if args.tiny else 1024)
    pipe = build(args.tiny)
    pipe.set_progress_bar_config(disable=True)
    request = dict(width=size, height=size, steps=args.steps, guidance=1.0)

    def one(seed: int) -> None:
        diffusion.generate(pipe, prompt=f"a lighthouse at dusk, variant {seed}", seed=seed, **request)

    one(0)  # warm-up: kernels, allocator
    _sync()
    count = max(args.per_thread, 4)
    started = time.perf_counter()
    for seed in range(count):
        one(seed)
    _sync()
    baseline = count / (time.perf_counter() - started)
    rows = [{"concurrency": "direct, 1 thread", "images_per_s": baseline, "ratio": 1.0, "batches": None}]

    pools = [("1 pipeline", lambda: GeneratorWorker(pipe, max_batch=args.max_batch))]
    if args.devices:
        from tools.generator.worker import GeneratorPool

        others = [build(args.tiny, d) for d in args.devices.split(",")[1:]]
        for other in others:
            other.set_progress_bar_config(disable=True)
            diffusion.generate(other, prompt="warm-up", seed=0, **request)
        pools.append(
            (
                f"{1 + len(others)} pipelines",
                lambda: GeneratorPool([GeneratorWorker(p, max_batch=args.max_batch) for p in [pipe, *others]]),
            )
        )
    for (label, make), level in [(p, lv) for p in pools for lv in map(int, args.levels.split(","))]:
        worker = make()

        def client(index: int) -> None:
            for k in range(args.per_thread):
                seed = index * 1000 + k
                worker.run(dict(prompt=f"a lighthouse at dusk, variant {seed}", seed=seed, **request))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(level)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _sync()
        rate = level * args.per_thread / (time.perf_counter() - started)
        workers = getattr(worker, "workers", [worker])
        rows.append(
            {
                "concurrency": f"{level} ({label})",
                "images_per_s": rate,
                "ratio": rate / baseline,
                "batches": sorted({b for w in workers for b in w.batch_sizes}),
            }
        )
        for w in workers:
            w.close()

    print(
        f"{'tiny CPU' if args.tiny else 'FLUX.2-klein-4B random weights, CUDA'}: {size}², "
        f"{args.steps} steps, max batch {args.max_batch}, {args.per_thread} images per thread"
    )
    for row in rows:
        print(
            f"  concurrency {str(row['concurrency']):<17} {row['images_per_s']:7.2f} images/s  "
            f"{row['ratio']:5.2f}x direct   batch sizes {row['batches']}"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
