"""Generator node: one generation for the current step (SPEC §4).

The first attempt uses the plan's prompt; a regeneration uses the critic's refined prompt, or
the same prompt again when the critic's reply was unusable (a new seed then gives a new image).
Step 1 is text-to-image; later steps edit the image accepted for the step before.
"""

from __future__ import annotations

import time

from langgraph.runtime import Runtime

from graph.context import Context, context_of
from graph.state import Attempt, State, attempts_for, current_step, previous_image
from nodes import events
from tools import diffusion
from tools.image_store import ImageStore


def next_prompt(plan_prompt: str, earlier: list[Attempt]) -> str:
    """The prompt for the next attempt of a step.

    >>> next_prompt("a crane", [])
    'a crane'
    >>> v = {"success": False, "refine_prompt": "a white paper crane", "reasoning": "", "error": None}
    >>> next_prompt("a crane", [{"prompt": "a crane", "verdict": v}])
    'a white paper crane'
    """
    if not earlier:
        return plan_prompt
    last = earlier[-1]
    verdict = last["verdict"]
    if verdict and verdict["success"] is False and verdict["refine_prompt"]:
        return verdict["refine_prompt"]
    return last["prompt"]


def generate(state: State, runtime: Runtime[Context]) -> dict:
    ctx = context_of(runtime)
    run_id = state["run_id"]
    step = current_step(state)
    number = step["step_number"]
    earlier = attempts_for(state, number)
    attempt = len(earlier) + 1
    prompt = next_prompt(step["prompt"], earlier)
    seed = diffusion.derive_seed(ctx.seed, number, attempt)
    store = ImageStore(ctx.runs_dir)
    source_ref = previous_image(state)
    source = store.load(source_ref) if source_ref else None

    pipe = diffusion.load_pipeline(ctx.generator_model, ctx.device, ctx.dtype)
    events.emit(runtime, events.ATTEMPT_STARTED, run_id, step_number=number, attempt=attempt,
                prompt=prompt, seed=seed, mode="edit" if source is not None else "text-to-image")
    started = time.perf_counter()
    image = diffusion.generate(
        pipe, prompt=prompt, seed=seed, width=ctx.width, height=ctx.height,
        steps=ctx.num_inference_steps, guidance=ctx.guidance_scale, source=source,
        on_step=lambda done, total: events.emit(
            runtime, events.DENOISE_PROGRESS, run_id, step_number=number, attempt=attempt,
            done=done, total=total))
    seconds = time.perf_counter() - started
    ref = store.put(image)
    events.emit(runtime, events.IMAGE_READY, run_id, step_number=number, attempt=attempt,
                image=ref, seconds=round(seconds, 3))
    return {"attempts": [Attempt(
        step_number=number, attempt=attempt, prompt=prompt, seed=seed, source=source_ref, image=ref,
        last_allowed=attempt >= ctx.max_generations_per_step, verdict=None,
        generate_s=round(seconds, 3), critique_s=None)]}
