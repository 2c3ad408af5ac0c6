"""Benchmark: how fast the step-wise reward regenerates, batched against one by one, in one process.

The step-wise GRPO reward (``training.rewards.StepwiseRewards``) regenerates a failed step once
per rollout: 8 edits of the same origin image with the same seed and 8 different refined
prompts. It sends them to ``tools.generator.diffusion.generate_batch`` together, which runs them as one
pipeline call. This script measures whether that pays, on the full klein-4B architecture with
random weights (the compute per image is the real model's; the images are noise):

  one_by_one   8 ``generate_batch`` calls of one request each
  batched      one ``generate_batch`` call of all 8
  reward       the whole reward path for a group of 8 failed-step rollouts (regeneration in
               one call, images into the image store, a judge that answers instantly), to show
               the reward's own overhead (PNG encoding) on top of the generator

Each mode: one untimed warm-up, then ``--runs`` timed repetitions (median), the modes
alternating so that clock drift hits both. Reported: regenerations per second, the ratio
batched / one-by-one (the issue's target is >= 2x) and peak GPU memory, per image size.

    python -m evals.perf.reward [--sizes 1024 512] [--runs 2] [--out result.json]
    python -m evals.perf.reward --tiny        # CPU smoke test on the tiny klein (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from evals.perf.generator import reference_image  # the same origin image as the generator benchmark

log = logging.getLogger("bench_reward")

PROMPTS = [
    "Make the sky orange at sunset and add birds flying over the valley",
    "Add a red wooden boat on the lake in the foreground, keep everything else unchanged",
    "Turn the season to winter: snow on the roofs and the trees, a grey overcast sky",
    "Replace the stone bridge with a steel suspension bridge of the same size",
    "Add warm light in every window of the village houses, dusk lighting",
    "Make the river wider and bluer, with gentle ripples reflecting the mountains",
    "Put a hot-air balloon with blue and yellow stripes high in the sky on the left",
    "Change the painting style to a crisp ink drawing with light watercolour washes",
]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.perf.reward",
        description="Regenerations per second of the step-wise GRPO reward on klein-4B (random weights, "
        "bf16, GPU): 8 edits of one origin image with one seed and 8 prompts, batched in one "
        "generate_batch call against one call each, plus the whole reward path.",
    )
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny random klein on CPU at 64²")
    p.add_argument("--sizes", type=int, nargs="+", help="image sides (default 1024 512; 64 with --tiny)")
    p.add_argument("--count", type=int, default=8, help="regenerations per group (GRPO group size)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (klein: 4)")
    p.add_argument("--runs", type=int, default=2, help="timed repetitions per mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    return p


def build_pipeline(tiny: bool, seed: int):
    import torch

    if tiny:
        from tools.doubles.tiny_klein import build_tiny_klein_pipeline

        pipe = build_tiny_klein_pipeline(seed)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: run on the GPU machine, or use --tiny for the CPU smoke test")
        pipe = full_klein_pipeline(seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_klein_pipeline(seed: int):
    """The full klein-4B architecture with random weights, as the generator benchmark builds it."""
    from evals.perf.generator import build_full_klein_pipeline

    return build_full_klein_pipeline("cuda", seed)


class InstantJudge:
    """Stands in for ``tools.judge.judge.Judge``: stores images like it, answers at once."""

    def __init__(self, root: str) -> None:
        from tools.store.images import ImageStore

        self.store = ImageStore(root)

    def judge_many(self, items):
        return [SimpleNamespace(sc=6.0, pq=6.0, ok=True) for _ in items]


def measure(pipe, size: int, args) -> dict:
    import torch

    from tools.generator.diffusion import generate_batch
    from training.rewards import StepwiseRewards

    cuda = torch.cuda.is_available() and not args.tiny
    origin = reference_image(size, args.seed + 1)
    requests = [
        dict(
            prompt=PROMPTS[i % len(PROMPTS)] + (f" ({i})" if i >= len(PROMPTS) else ""),
            seed=1234,
            width=size,
            height=size,
            steps=args.steps,
            guidance=1.0,
            source=origin,
        )
        for i in range(args.count)
    ]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def one_by_one():
        return [generate_batch(pipe, [r])[0] for r in requests]

    def batched():
        return generate_batch(pipe, requests)

    store = tempfile.mkdtemp(prefix="bench-reward-")
    rewards = StepwiseRewards(
        lambda reqs: generate_batch(pipe, reqs), InstantJudge(store), steps=args.steps, max_batch=args.count
    )
    columns = {
        "success": [False] * args.count,
        "semantics": [4.0] * args.count,
        "quality": [5.0] * args.count,
        "origin_prompt": ["a village by a lake"] * args.count,
        "rewritten_prompt": ["a village"] * args.count,
        "from_scratch": [False] * args.count,
        "seed": [1234] * args.count,
        "width": [size] * args.count,
        "height": [size] * args.count,
        "images": [[origin, origin]] * args.count,
    }
    replies = [
        f'<answer>{{"previous_step_success": false, "refine_prompt": {json.dumps(r["prompt"])}}}</answer>'
        for r in requests
    ]
    step = [0]

    def reward():
        step[0] += 1  # a new batch each time (the reward reuses a batch's result otherwise)
        state = SimpleNamespace(global_step=step[0])
        return asyncio.run(rewards.semantics_reward(replies, trainer_state=state, **columns))

    modes = {"one_by_one": one_by_one, "batched": batched, "reward": reward}
    times: dict[str, list[float]] = {name: [] for name in modes}
    peaks: dict[str, float] = {}
    for name, fn in modes.items():  # warm-up: kernels, allocator, the batch-8 shapes
        fn()
    for _ in range(args.runs):
        for name, fn in modes.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
            if cuda:
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    result = {"size": size, "count": args.count, "steps": args.steps}
    for name, values in times.items():
        seconds = statistics.median(values)
        result[name] = {
            "seconds": round(seconds, 3),
            "runs_s": [round(v, 3) for v in values],
            "per_second": round(args.count / seconds, 3),
            "ms_per_image": round(seconds / args.count * 1e3, 1),
            "peak_gib": round(peaks[name], 2) if name in peaks else None,
        }
    result["batched_speedup"] = round(statistics.median(times["one_by_one"]) / statistics.median(times["batched"]), 3)
    result["reward_overhead_ms_per_image"] = round(
        (statistics.median(times["reward"]) - statistics.median(times["batched"])) / args.count * 1e3, 1
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from tools.logs import configure_logging

    configure_logging(logging.INFO, "%(asctime)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    sizes = args.sizes or ([64] if args.tiny else [1024, 512])
    import torch

    if args.tiny:
        torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = build_pipeline(args.tiny, args.seed)
    log.info("pipeline ready in %.1f s", time.perf_counter() - start)
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu",
        "model": "tiny klein" if args.tiny else "klein-4B architecture, random weights, bf16",
        "sizes": [],
    }
    for size in sizes:
        result = measure(pipe, size, args)
        results["sizes"].append(result)
        print(
            f"{size}²: one by one {result['one_by_one']['per_second']:.2f}/s "
            f"({result['one_by_one']['ms_per_image']} ms/image), batched "
            f"{result['batched']['per_second']:.2f}/s ({result['batched']['ms_per_image']} ms/image), "
            f"speed-up x{result['batched_speedup']:.2f} (target x2); reward path "
            f"{result['reward']['per_second']:.2f}/s (+{result['reward_overhead_ms_per_image']} ms/image "
            f"over batched); peak {result['batched']['peak_gib']} GiB batched",
            flush=True,
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
