"""Trajectories per hour: a reference-style loop against ours, same models, same scripts (issue #10).

    python -m evals.perf.trajectories --tiny                 # CPU smoke test, tiny models
    python -m evals.perf.trajectories --levels 1,8,32        # one H200, full-size random weights

Both sides run the real graph with the same models: a Qwen3-VL-8B-sized planner/critic and the
FLUX.2-klein-4B generator, random weights at full size (tiny ones with ``--tiny``). Random weights
cannot write plans or verdicts, so every planner/critic call does its real work (prefill of the
real message with its images, then exactly ``--planner-tokens`` / ``--critic-tokens`` decoded
tokens) and then answers with the demo's scripted reply (``tools.doubles.demo_script``: a 3-step plan,
step 2 rejected once). So both sides do the same computation and follow the same trajectory.

- reference: transformers ``generate``, batch 1, one trajectory at a time, plain diffusers
  (how the paper's scripts run); ``--reference-runs`` single-trajectory samples (default 3: one
  sample swung from 88 s to 139 s between two sessions), measured after ours (so a run cut short
  still has ours), reported as min / median / max, and every ratio is taken against the median;
- ours: the fast decode path with continuous batching (``tools.llm.continuous``: requests join
  the running batch, on the engine's own CUDA stream), the shared generator worker with
  ``--generator-speedups`` (default on: a second klein with the same weights, compiled, used
  at batch 1 since the compiled blocks recompile for each new batch size), N trajectories at
  once for each N of ``--levels``. ``--same-stream-levels`` measures those levels again with
  the VLM on the generator's (default) stream: what overlapping the two
  on separate streams brings. ``--prefill-beside-decode-levels`` measures them again with the
  engine's experimental prefill thread (``prefill_beside_decode=True``), and
  ``--stall-dump-s`` prints the engine's and the generator's thread stacks when a level runs
  longer than that (that mode stalled on the H200: see ``tools.llm.continuous``).

Per level it prints trajectories/hour, the ratio to the reference median, the GPU's busy share
(NVML, sampled every 0.2 s) and where the wall time went: VLM prefill, VLM decode, generator
(each the union of its intervals: engine rounds and pipeline calls, timed on the host after the
GPU finished), the part where generator and VLM ran at the same time, idle (neither ran), and
per trajectory the CPU overhead (its wall time minus its waits for the planner/critic and for
the generator: graph nodes, checkpoints, image store, message building).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tools.doubles import demo_script

KLEIN_ID = "black-forest-labs/FLUX.2-klein-4B"  # known id: the run's checks see a klein model


#: Seconds each thread spent waiting for planner/critic replies (reset per measurement).
VLM_WAITS: dict[int, float] = {}
#: (start, end) of every generator pipeline call.
GENERATOR_CALLS: list[tuple[float, float]] = []
_lock = threading.Lock()


class ScriptedAfterCompute(BaseChatModel):
    """Does a real model's work for a message (forced reply length), then answers from the script."""

    inner: Any
    tokens: int
    role_model: str  # demo_script dispatches planner/critic replies on this name

    @property
    def _llm_type(self) -> str:
        return "scripted-after-compute"

    @property
    def queues_own_calls(self) -> bool:
        """As the product's in-process model: no per-endpoint cap when the inner one queues."""
        return bool(getattr(self.inner, "queues_own_calls", False))

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        started = time.perf_counter()
        self.inner.invoke(messages, max_new_tokens=self.tokens, min_new_tokens=self.tokens)
        with _lock:
            thread = threading.get_ident()
            VLM_WAITS[thread] = VLM_WAITS.get(thread, 0.0) + time.perf_counter() - started
        body = {"model": self.role_model, "messages": [{"role": m.type, "content": m.content} for m in messages]}
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=AIMessage(content=demo_script.respond(body), response_metadata={"finish_reason": "stop"})
                )
            ]
        )


class BusySampler:
    """The GPU's utilisation sampled in the background (NVML); None when unavailable."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # noqa: BLE001 -- no NVML here: report None
                return
            time.sleep(0.2)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def busy(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def time_pipeline_calls(pipe: Any) -> Any:
    """Make ``pipe`` record the interval of each call in GENERATOR_CALLS (a subclass of its own
    class, so the family lookup by class still sees klein)."""
    cls = type(pipe)

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return cls.__call__(self, *args, **kwargs)
        finally:
            with _lock:
                GENERATOR_CALLS.append((started, time.perf_counter()))

    pipe.__class__ = type(f"Timed{cls.__name__}", (cls,), {"__call__": __call__})
    return pipe


def union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def clipped(intervals, start: float, stop: float) -> list[tuple[float, float]]:
    return [(max(a, start), min(b, stop)) for a, b in intervals if b > start and a < stop]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent trajectories (ours)")
    parser.add_argument(
        "--reference-runs", type=int, default=3, help="single-trajectory samples of the reference loop (default 3)"
    )
    parser.add_argument(
        "--same-stream-levels", default="", help="levels to measure again with the VLM on the generator's stream"
    )
    parser.add_argument(
        "--prefill-beside-decode-levels",
        default="",
        help="levels to measure again with the VLM's prefills on a thread beside decode (experimental)",
    )
    parser.add_argument(
        "--stall-dump-s",
        type=float,
        default=None,
        help="print the VLM engine's and the generator's thread stacks when one level runs longer than this",
    )
    parser.add_argument(
        "--generator-speedups",
        default="on",
        choices=("off", "on", "fp8"),
        help="klein speedups for ours (tools.generator.klein_speed; default on)",
    )
    parser.add_argument("--planner-tokens", type=int, default=400, help="forced planner reply length")
    parser.add_argument("--critic-tokens", type=int, default=200, help="forced critic reply length")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 tiny)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    return parser


def build_models(tiny: bool, folder: str, speedups: str = "off") -> tuple[str, str]:
    """Register the VLM and the generator in their caches; return (vlm path, device). With
    ``speedups``, a second klein (same random weights) is optimised and cached under that
    setting, so runs with ``generator_speedups=speedups`` use it and the reference the eager one."""
    from tools.generator import diffusion
    from tools.llm.local import load_processor, register_vlm
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    vlm_folder = str(save_tiny_qwen3vl(Path(folder) / "tiny-qwen3vl"))
    if tiny:
        from tools.doubles.tiny_klein import build_tiny_klein_pipeline

        diffusion.register_pipeline(KLEIN_ID, time_pipeline_calls(build_tiny_klein_pipeline()), "cpu", "float32")
        return vlm_folder, "cpu"
    from evals.perf.generator import build_full_klein_pipeline
    from evals.perf.vlm_decode import _build_8b

    processor = load_processor(vlm_folder)
    register_vlm("random-qwen3-vl-8b", _build_8b(processor, "cuda"), processor, device="cuda", dtype="bfloat16")
    diffusion.register_pipeline(KLEIN_ID, time_pipeline_calls(build_full_klein_pipeline("cuda")), "cuda", "bfloat16")
    if speedups != "off":
        from tools.generator.klein_speed import optimize_pipeline

        fast = time_pipeline_calls(build_full_klein_pipeline("cuda"))
        fast.set_progress_bar_config(disable=True)
        # the cache entry load_pipeline looks up for generator_speedups=speedups
        diffusion._pipelines[(KLEIN_ID, "cuda", "bfloat16", None, 1.0, "none", speedups)] = fast
        diffusion._call_locks[id(fast)] = threading.Lock()
        applied = optimize_pipeline(fast, fp8=speedups == "fp8", cache_dir=str(Path(folder) / "kc"))
        print("  generator speedups for ours:", ", ".join(applied), flush=True)
    return "random-qwen3-vl-8b", "cuda"


def chat_models(vlm: str, device: str, fast: bool, batched: bool, args: argparse.Namespace):
    from tools.llm.chat import ChatModels
    from tools.llm.local import TransformersChatModel
    from tools.llm.batcher import BatchingChatModel

    inner = TransformersChatModel(
        model_path=vlm,
        device=device,
        temperature=0.0,
        max_new_tokens=max(args.planner_tokens, args.critic_tokens),
        fast_decode=fast,
    )
    if batched:
        inner = BatchingChatModel(inner=inner, max_batch=64)
    return ChatModels(
        planner=ScriptedAfterCompute(inner=inner, tokens=args.planner_tokens, role_model=demo_script.PLANNER_MODEL),
        critic=ScriptedAfterCompute(inner=inner, tokens=args.critic_tokens, role_model=demo_script.CRITIC_MODEL),
    )


def engine_timeline(vlm: str, device: str) -> list[tuple[str, float, float, int]]:
    """The continuous-batching engine's rounds so far (empty when none runs)."""
    from tools.llm import continuous
    from tools.llm.loading import load_vlm

    engine = continuous._engines.get(id(load_vlm(vlm, device, "auto").model))
    return list(engine.timeline) if engine is not None else []


def prepare_engine(vlm: str, device: str) -> None:
    """Capture the engine's step graphs for every batch size at the shapes the warm-up saw."""
    from tools.llm import continuous
    from tools.llm.loading import load_vlm

    engine = continuous._engines.get(id(load_vlm(vlm, device, "auto").model))
    if engine is not None:
        started = time.perf_counter()
        count = engine.prepare().result()
        print(f"  captured {count} decode graphs in {time.perf_counter() - started:.1f} s", flush=True)


@contextlib.contextmanager
def stall_watch(label: str, seconds: float | None):
    """Print the stacks of the VLM engine's and the generator's threads if the block runs longer
    than ``seconds`` (a hang's evidence, where faulthandler's dump stops at 100 threads)."""
    if seconds is None:
        yield
        return

    def dump() -> None:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        print(f"  {label} still running after {seconds:.0f} s; engine and generator threads:", flush=True)
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, "")
            if name.startswith(("vlm-", "generator-")):
                print(f"  --- {name}\n{''.join(traceback.format_stack(frame))}", flush=True)

    timer = threading.Timer(seconds, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def measure(
    label: str,
    count: int,
    concurrency: int,
    models: Any,
    context: Any,
    vlm: str,
    device: str,
    stall_dump_s: float | None = None,
) -> dict:
    from graph.runs.batch import run_batch
    from graph.runs.inspection import run_details

    items = [{"id": f"{label}-{n}", "request": f"How do I build model number {n}?"} for n in range(count)]
    ended: dict[str, tuple[int, float]] = {}

    def on_progress(_done: int, _total: int, run_id: str, _label: str) -> None:
        ended[run_id] = (threading.get_ident(), time.perf_counter())

    VLM_WAITS.clear()
    generator_before = len(GENERATOR_CALLS)
    with BusySampler() as sampler, stall_watch(label, stall_dump_s):
        started = time.perf_counter()
        report = run_batch(items, context, batch=label, concurrency=concurrency, models=models, on_progress=on_progress)
        finished = time.perf_counter()
    seconds = finished - started
    if report.failed:
        raise RuntimeError(f"{label}: runs failed: {report.failed}")
    rounds = [r for r in engine_timeline(vlm, device) if r[2] > started and r[1] < finished]
    prefill = clipped([(a, b) for kind, a, b, _ in rounds if kind == "prefill"], started, finished)
    decode = clipped([(a, b) for kind, a, b, _ in rounds if kind == "decode"], started, finished)
    generator = clipped(GENERATOR_CALLS[generator_before:], started, finished)
    vlm_busy, gen_busy = union(prefill + decode), union(generator)
    busy = union(prefill + decode + generator)
    if not rounds:  # generate (the reference): one caller, so its VLM waits are its VLM time
        vlm_busy = sum(VLM_WAITS.values())
        busy = vlm_busy + gen_busy
    overhead = None
    if concurrency >= count and ended:  # every run started at `started`: its wall time is its end
        generator_waits = sum(
            a.get("generate_s") or 0.0
            for run_id in ended
            for a in run_details(context.runs_dir, run_id)["state"].get("attempts", [])
        )
        walls = sum(end - started for _, end in ended.values())
        # the graph runs nodes on threads of its own, so the waits are summed over all threads
        overhead = (walls - sum(VLM_WAITS.values()) - generator_waits) / len(ended)
    decode_rows = [rows for kind, _, _, rows in rounds if kind == "decode"]
    row = {
        "label": label,
        "trajectories": count,
        "concurrency": concurrency,
        "seconds": seconds,
        "per_hour": count / seconds * 3600,
        "gpu_busy": sampler.busy,
        "vlm_s": vlm_busy,
        "prefill_s": union(prefill) if rounds else None,
        "decode_s": union(decode) if rounds else None,
        "generator_s": gen_busy,
        "overlap_s": vlm_busy + gen_busy - busy,
        "idle_s": seconds - busy,
        "prefills": len(prefill),
        "generator_calls": len(generator),
        "mean_decode_rows": statistics.fmean(decode_rows) if decode_rows else None,
        "cpu_overhead_per_trajectory_s": overhead,
    }
    print(f"  measured {label}: {count} in {seconds:.1f} s", flush=True)
    return row


def restart_engine(vlm: str, device: str, **settings: Any) -> None:
    """Start the VLM's engine anew with ``settings`` (``own_stream``, ``prefill_beside_decode``)."""
    from tools.llm import continuous
    from tools.llm.loading import load_vlm

    loaded = load_vlm(vlm, device, "auto")
    continuous.close_engine(loaded.model)
    continuous.engine_for(loaded.model, loaded.processor.tokenizer, max_batch=64, **settings)


def print_table(rows: list[dict], base: float) -> None:
    print(
        f"  {'loop':<24}{'n':>4}{'wall s':>9}{'per hour':>10}{'vs ref':>8}{'GPU':>6}{'VLM':>8}"
        f"{'prefill':>9}{'decode':>8}{'gen':>8}{'overlap':>9}{'idle':>7}{'rows':>6}{'CPU/traj':>10}"
    )
    for row in rows:
        busy = "n/a" if row["gpu_busy"] is None else f"{row['gpu_busy']:.0%}"
        rows_ = "" if row["mean_decode_rows"] is None else f"{row['mean_decode_rows']:.1f}"
        cpu = row["cpu_overhead_per_trajectory_s"]
        prefill = "-" if row["prefill_s"] is None else f"{row['prefill_s']:.1f}"
        decode = "-" if row["decode_s"] is None else f"{row['decode_s']:.1f}"
        print(
            f"  {row['label']:<24}{row['trajectories']:>4}{row['seconds']:>9.1f}"
            f"{row['per_hour']:>10.1f}{row['per_hour'] / base:>7.2f}x{busy:>6}{row['vlm_s']:>8.1f}"
            f"{prefill:>9}{decode:>8}{row['generator_s']:>8.1f}"
            f"{row['overlap_s']:>9.1f}{row['idle_s']:>7.1f}{rows_:>6}"
            f"{'' if cpu is None else f'{cpu:.2f} s':>10}"
        )


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from graph.context import Context
    from tools.generator.diffusion import silence_library_progress_bars

    silence_library_progress_bars()
    size = args.size or (64 if args.tiny else 1024)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        speedups = "off" if args.tiny else args.generator_speedups
        vlm, device = build_models(args.tiny, folder, speedups)
        context = Context(
            runs_dir=str(Path(folder) / "runs"),
            generator_model=KLEIN_ID,
            device=device,
            dtype="float32" if args.tiny else "bfloat16",
            width=size,
            height=size,
            # compiled klein (dynamic=False) recompiles for every new batch size
            # (~25 s each); at 1024² batching gains ~8% (evals.perf.worker)
            generator_max_batch=1 if speedups != "off" else 8,
        )
        m = dict(vlm=vlm, device=device, stall_dump_s=args.stall_dump_s)
        ours_context = dataclasses.replace(context, generator_speedups=speedups)
        ours = chat_models(vlm, device, fast=True, batched=True, args=args)
        measure("warmup", 1, 1, ours, ours_context, **m)  # kernels, compiles, first graph captures
        prepare_engine(vlm, device)
        levels = [int(x) for x in args.levels.split(",") if x]
        variants = [  # (levels, label suffix, engine settings, CUDA only): measured again after ours
            ({int(x) for x in args.same_stream_levels.split(",") if x}, "1stream", dict(own_stream=False), True),
            (
                {int(x) for x in args.prefill_beside_decode_levels.split(",") if x},
                "prefill-beside",
                dict(prefill_beside_decode=True),
                False,
            ),
        ]

        def save() -> None:
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=2))

        for level in levels:
            rows.append(measure(f"ours-{level}", level, level, ours, ours_context, **m))
            save()
        for variant_levels, suffix, settings, cuda_only in variants:
            if not variant_levels or (args.tiny and cuda_only):  # streams exist on CUDA only
                continue
            restart_engine(vlm, device, **settings)
            measure(f"warmup-{suffix}", 1, 1, ours, ours_context, **m)
            prepare_engine(vlm, device)
            for level in sorted(variant_levels):
                rows.append(measure(f"ours-{level}-{suffix}", level, level, ours, ours_context, **m))
                save()
            restart_engine(vlm, device)
        # last, so that a run cut short still has ours; the first sample is also the first
        # call of generate (cold), which the median leaves out
        reference = []
        for n in range(args.reference_runs):
            reference.append(
                measure(
                    f"reference-{n + 1}",
                    1,
                    1,
                    chat_models(vlm, device, fast=False, batched=False, args=args),
                    context,
                    **m,
                )
            )
            rows.append(reference[-1])
            save()
    per_hour = [row["per_hour"] for row in reference]
    base = statistics.median(per_hour) if per_hour else rows[0]["per_hour"]
    print(
        f"{'tiny models on CPU' if args.tiny else 'Qwen3-VL-8B-sized + FLUX.2-klein-4B, random weights'}"
        f": {size}², plan 3 steps (step 2 rejected once: 4 generations, 4 critic calls, 1 plan), "
        f"planner {args.planner_tokens} / critic {args.critic_tokens} tokens per reply; ours with "
        f"generator speedups {speedups}"
    )
    if per_hour:
        walls = sorted(row["seconds"] for row in reference)
        print(
            f"  reference, {len(walls)} runs: {walls[0]:.1f} / {statistics.median(walls):.1f} / "
            f"{walls[-1]:.1f} s per trajectory (min / median / max); ratios are to the median"
        )
    print(
        "  seconds of wall time: VLM, prefill, decode, gen = time the VLM ran (the reference: its "
        "calls) / prefilled / decoded / the generator ran; overlap = VLM and generator at once; "
        "idle = neither; rows = mean rows per decode round; CPU/traj = a trajectory's wall time "
        "minus its model waits"
    )
    print_table(rows, base)
    if args.out:
        Path(args.out).write_text(json.dumps({"reference_median_per_hour": base, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
