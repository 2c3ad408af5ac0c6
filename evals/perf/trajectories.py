"""Trajectories per hour: a reference-style loop against ours, same models, same scripts (issue #10).

    python -m evals.perf.trajectories --tiny                 # CPU smoke test, tiny models
    python -m evals.perf.trajectories --levels 1,8,32        # one H200, full-size random weights

Both sides run the real graph with the same models: a Qwen3-VL-8B-sized planner/critic and the
FLUX.2-klein-4B generator, random weights at full size (tiny ones with ``--tiny``). Random weights
cannot write plans or verdicts, so every planner/critic call does its real work (prefill of the
real message with its images, then exactly ``--planner-tokens`` / ``--critic-tokens`` decoded
tokens) and then answers with the demo's scripted reply (``tools.doubles.demo_script``: a 3-step plan,
step 2 rejected once). So both sides do the same computation and follow the same trajectory.

- reference: transformers ``generate``, batch 1, one trajectory after another (how the paper's
  scripts run), ``--reference-runs`` trajectories;
- ours: the fast decode path, one batching queue per VLM shared by all runs, the shared
  generator worker, N trajectories at once for each N of ``--levels``.

Prints trajectories/hour for each, the ratio to the reference, and the GPU's busy share (sampled
with NVML every 0.2 s when available).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tools.doubles import demo_script

KLEIN_ID = "black-forest-labs/FLUX.2-klein-4B"  # known id: the run's checks see a klein model


class ScriptedAfterCompute(BaseChatModel):
    """Does a real model's work for a message (forced reply length), then answers from the script."""

    inner: Any
    tokens: int
    role_model: str  # demo_script dispatches planner/critic replies on this name

    @property
    def _llm_type(self) -> str:
        return "scripted-after-compute"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.inner.invoke(messages, max_new_tokens=self.tokens, min_new_tokens=self.tokens)
        body = {"model": self.role_model,
                "messages": [{"role": m.type, "content": m.content} for m in messages]}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=demo_script.respond(body), response_metadata={"finish_reason": "stop"}))])


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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent trajectories (ours)")
    parser.add_argument("--reference-runs", type=int, default=1,
                        help="trajectories of the reference loop, one after another (default 1)")
    parser.add_argument("--planner-tokens", type=int, default=400, help="forced planner reply length")
    parser.add_argument("--critic-tokens", type=int, default=200, help="forced critic reply length")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 tiny)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    return parser


def build_models(tiny: bool, folder: str) -> tuple[str, str]:
    """Register the VLM and the generator in their caches; return (vlm path, device)."""
    from tools.generator import diffusion
    from tools.llm.local import load_processor, register_vlm
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    vlm_folder = str(save_tiny_qwen3vl(Path(folder) / "tiny-qwen3vl"))
    if tiny:
        from tools.doubles.tiny_klein import build_tiny_klein_pipeline

        diffusion.register_pipeline(KLEIN_ID, build_tiny_klein_pipeline(), "cpu", "float32")
        return vlm_folder, "cpu"
    from evals.perf.generator import build_full_klein_pipeline
    from evals.perf.vlm_decode import _build_8b

    processor = load_processor(vlm_folder)
    register_vlm("random-qwen3-vl-8b", _build_8b(processor, "cuda"), processor, device="cuda",
                 dtype="bfloat16")
    diffusion.register_pipeline(KLEIN_ID, build_full_klein_pipeline("cuda"), "cuda", "bfloat16")
    return "random-qwen3-vl-8b", "cuda"


def chat_models(vlm: str, device: str, fast: bool, batched: bool, args: argparse.Namespace):
    from tools.llm.chat import ChatModels
    from tools.llm.local import TransformersChatModel
    from tools.llm.batcher import BatchingChatModel

    inner = TransformersChatModel(model_path=vlm, device=device, temperature=0.0,
                                  max_new_tokens=max(args.planner_tokens, args.critic_tokens),
                                  fast_decode=fast)
    if batched:
        inner = BatchingChatModel(inner=inner, max_batch=64)
    return ChatModels(
        planner=ScriptedAfterCompute(inner=inner, tokens=args.planner_tokens,
                                     role_model=demo_script.PLANNER_MODEL),
        critic=ScriptedAfterCompute(inner=inner, tokens=args.critic_tokens,
                                    role_model=demo_script.CRITIC_MODEL))


def measure(label: str, count: int, concurrency: int, models: Any, context: Any) -> dict:
    from graph.runs.batch import run_batch

    items = [{"id": f"{label}-{n}", "request": f"How do I build model number {n}?"}
             for n in range(count)]
    with BusySampler() as sampler:
        started = time.perf_counter()
        report = run_batch(items, context, batch=label, concurrency=concurrency, models=models)
        seconds = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(f"{label}: runs failed: {report.failed}")
    row = {"label": label, "trajectories": count, "concurrency": concurrency, "seconds": seconds,
           "per_hour": count / seconds * 3600, "gpu_busy": sampler.busy}
    print(f"  measured {label}: {count} in {seconds:.1f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from graph.context import Context
    from tools.generator.diffusion import silence_library_progress_bars

    silence_library_progress_bars()
    size = args.size or (64 if args.tiny else 1024)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        vlm, device = build_models(args.tiny, folder)
        context = Context(runs_dir=str(Path(folder) / "runs"), generator_model=KLEIN_ID,
                          device=device, dtype="float32" if args.tiny else "bfloat16",
                          width=size, height=size, generator_max_batch=8)
        warm = chat_models(vlm, device, fast=True, batched=True, args=args)
        measure("warmup", 1, 1, warm, context)  # kernels, allocator, first graph capture
        reference = measure("reference", args.reference_runs, 1,
                            chat_models(vlm, device, fast=False, batched=False, args=args), context)
        rows.append(reference)
        for level in (int(x) for x in args.levels.split(",")):
            rows.append(measure(f"ours-{level}", level, level,
                                chat_models(vlm, device, fast=True, batched=True, args=args), context))
    base = reference["per_hour"]
    print(f"{'tiny models on CPU' if args.tiny else 'Qwen3-VL-8B-sized + FLUX.2-klein-4B, random weights'}"
          f": {size}², plan 3 steps (step 2 rejected once: 4 generations, 4 critic calls, 1 plan), "
          f"planner {args.planner_tokens} / critic {args.critic_tokens} tokens per reply")
    for row in rows:
        busy = "n/a" if row["gpu_busy"] is None else f"{row['gpu_busy']:.0%}"
        print(f"  {row['label']:<10} {row['trajectories']:>3} trajectories in {row['seconds']:7.1f} s  "
              f"{row['per_hour']:9.1f} per hour  {row['per_hour'] / base:6.2f}x reference  "
              f"GPU busy {busy}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
