"""Making one item's output under one configuration: a full graph run, or the bare generator.

Cost is measured, not estimated: generator calls and critic calls come from the run's document;
VLM requests and tokens from a ``tools.llm.usage.Usage`` callback on the item's planner and
critic clients (OpenAI-compatible backends; the in-process backend reports neither); wall time is
measured around the item. A graph run resumed after a crash is measured for its resumed part
only; one found already finished has unknown VLM use and time.

The item's planner and critic clients are the run's own (``tools.llm.chat.model_for``: the same
endpoint, model, temperature, timeout, retries and per-role reply budget ``planner_max_tokens``
/ ``critic_max_tokens`` as ``interleave run``), copied only to attach the item's usage counter.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from checkpoints.run_ids import run_folder
from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.configs import Config
from evals.benchmarks.data import Item
from graph.context import Context
from tools.llm.usage import Usage
from tools.store.images import ImageStore


def counted_models(ctx: Context, usage: Usage) -> Any:
    """Planner and critic clients of this item that report to ``usage`` (openai backend only;
    a role on the in-process backend is left to the run, which builds it from the settings)."""
    from nodes.adapters import model_for
    from tools.llm.chat import ChatModels

    def make(role: str) -> Any:
        if getattr(ctx, f"{role}_backend") != "openai":
            return None
        # A shallow copy shares the shared client's connection pool; only the callbacks differ.
        return model_for(role, ctx).model_copy(update={"callbacks": [usage]})

    return ChatModels(planner=make("planner"), critic=make("critic"))


def _graph_output(bench: Benchmark, item: Item, batch: str, ctx: Context) -> dict[str, Any]:
    from graph.runs.batch import run_one

    request, images = bench.request(item)
    usage = Usage()
    run_id, outcome = run_one(
        {"id": item.id, "request": request, "images": images}, batch, ctx, counted_models(ctx, usage)
    )
    if outcome is not None and outcome.status != "finished":
        raise RuntimeError(f"run {run_id} ended {outcome.status}: {type(outcome.error).__name__}: {outcome.error}")
    folder = run_folder(ctx.runs_dir, run_id)  # item ids come from the data file
    document = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    attempts = [a for step in document["steps"] for a in step["attempts"]]
    # A run that had finished before this call was not watched: its VLM use and time are unknown.
    vlm = usage.as_dict() if outcome is not None else {"requests": None, "input_tokens": None, "output_tokens": None}
    cost = {
        "generator_calls": len(attempts),
        "critic_calls": sum(a["verdict"] is not None for a in attempts),
        "vlm_requests": vlm["requests"],
        "vlm_input_tokens": vlm["input_tokens"],
        "vlm_output_tokens": vlm["output_tokens"],
    }
    if outcome is None:
        cost["wall_s"] = None
    return {**bench.pick(item, document), "run_id": run_id, "trajectory": str(folder / "document.html"), "cost": cost}


def _bare_output(bench: Benchmark, item: Item, batch: str, ctx: Context) -> dict[str, Any]:
    """One generation from the benchmark prompt (an edit of the source image when there is one),
    written as a one-step document so it has a trajectory page like a graph run."""
    from graph.runs.batch import batch_run_id
    from nodes.generator import check_generator_settings, generation_settings, generator_pool
    from nodes.prompts import PROMPT_VERSION
    from tools.generator import diffusion
    from tools.store import documents

    check_generator_settings(ctx)
    prompt, source_path = bench.bare_request(item)
    store = ImageStore(ctx.runs_dir)
    source = store.import_file(source_path) if source_path else None
    pool = generator_pool(ctx)
    settings = generation_settings(ctx, pool.spec)  # in-process pool or images-API backend
    seed = diffusion.derive_seed(ctx.seed, 1, 1)
    started = time.perf_counter()
    image = pool.run(
        dict(prompt=prompt, seed=seed, **settings, source=store.load(source) if source else None, references=[])
    )
    seconds = round(time.perf_counter() - started, 3)
    ref = store.put(image)
    number = 2 if source else 1
    step = {
        "step_number": number,
        "step_name": "Generated image",
        "instruction": None,
        "prompt": prompt,
        "auxiliary_text": None,
    }
    attempt = {
        "step_number": number,
        "attempt": 1,
        "prompt": prompt,
        "seed": seed,
        "source": source,
        "image": ref,
        "last_allowed": True,
        "verdict": None,
        "generate_s": seconds,
        "critique_s": None,
    }
    entries = ([{"step_number": 1, "step_name": "Given image 1", "text": "", "image": source}] if source else []) + [
        {"step_number": number, "step_name": "Generated image", "text": "", "image": ref}
    ]
    run_id = batch_run_id(batch, item.id)
    document = documents.build_record(
        run_id=run_id,
        request=prompt,
        input_images=[source] if source else [],
        plan=[step],
        plan_reasoning="bare generator: no planner, no critic",
        entries=entries,
        attempts=[attempt],
        settings=ctx.to_record(),
        prompt_version=PROMPT_VERSION,
        plan_mode="continue" if source else "narrative",
    )
    folder = run_folder(ctx.runs_dir, run_id)  # item ids come from the data file
    documents.write_all(folder, document, Path(ctx.runs_dir))
    cost = {"generator_calls": 1, "critic_calls": 0, "vlm_requests": 0, "vlm_input_tokens": 0, "vlm_output_tokens": 0}
    return {**bench.pick(item, document), "run_id": run_id, "trajectory": str(folder / "document.html"), "cost": cost}


def make_output(bench: Benchmark, item: Item, config: Config, ctx: Context) -> dict[str, Any]:
    """Produce (or resume) one item's output under one configuration; raises on failure."""
    ctx = dataclasses.replace(ctx, review_plan=False, **config.overrides)
    batch = f"{bench.name}-{config.name}"
    started = time.perf_counter()
    made = (_bare_output if config.kind == "bare" else _graph_output)(bench, item, batch, ctx)
    made["cost"].setdefault("wall_s", round(time.perf_counter() - started, 3))
    return made
