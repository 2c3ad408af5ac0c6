"""Making one item's output under one configuration: a graph run, planned by the planner, or by
a one-step plan for the bare generator (``configs``).

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
from typing import Any

from checkpoints.run_ids import run_folder
from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.configs import Config
from evals.benchmarks.data import Item
from graph.context import Context
from tools.llm.usage import Usage


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


def _bare_item(bench: Benchmark, item: Item) -> dict[str, Any]:
    """The bare generator as a graph run: a one-step plan (an edit of the source image when there
    is one) given in place of the planner's, so the run goes straight to the generator."""
    prompt, source = bench.bare_request(item)
    step = {
        "step_number": 2 if source else 1,  # an edit continues the given image 1
        "step_name": "Generated image",
        "instruction": None,
        "prompt": prompt,
        "auxiliary_text": None,
    }
    return {
        "id": item.id,
        "request": prompt,
        "images": [source] if source else [],
        "plan": [step],
        "plan_reasoning": "bare generator: no planner, no critic",
    }


def _output(bench: Benchmark, item: Item, config: Config, batch: str, ctx: Context) -> dict[str, Any]:
    from graph.runs.batch import run_one

    usage = Usage()
    if config.kind == "bare":
        run_item, models = _bare_item(bench, item), None
    else:
        prompt, images = bench.request(item)
        run_item, models = {"id": item.id, "request": prompt, "images": images}, counted_models(ctx, usage)
    run_id, outcome = run_one(run_item, batch, ctx, models)
    if outcome is not None and outcome.status != "finished":
        raise RuntimeError(f"run {run_id} ended {outcome.status}: {type(outcome.error).__name__}: {outcome.error}")
    folder = run_folder(ctx.runs_dir, run_id)  # item ids come from the data file
    document = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    attempts = [a for step in document["steps"] for a in step["attempts"]]
    # A run that had finished before this call was not watched: its VLM use and time are unknown
    # (a bare run's are known: it asks no VLM).
    watched = outcome is not None or config.kind == "bare"
    vlm = usage.as_dict() if watched else {"requests": None, "input_tokens": None, "output_tokens": None}
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


def make_output(bench: Benchmark, item: Item, config: Config, ctx: Context) -> dict[str, Any]:
    """Produce (or resume) one item's output under one configuration; raises on failure."""
    ctx = dataclasses.replace(ctx, review_plan=False, **config.overrides)
    if config.kind == "bare":  # one generation, accepted as is: no critic call
        ctx = dataclasses.replace(ctx, max_generations_per_step=1)
    batch = f"{bench.name}-{config.name}"
    started = time.perf_counter()
    made = _output(bench, item, config, batch, ctx)
    made["cost"].setdefault("wall_s", round(time.perf_counter() - started, 3))
    return made
