"""Generator node: one generation for the current step (SPEC §4).

The first attempt uses the plan's prompt; a regeneration uses the critic's refined prompt, or
the same prompt again when the critic's reply was unusable (a new seed then gives a new image).
Step 1 is text-to-image; later steps edit the image accepted for the step before (in guidance
mode, the first new step edits the user's last image). The generation goes through the shared
worker of the pipeline (``tools.generator.worker``), so concurrent runs in one process share one
copy of the weights and batch their requests -- or, with ``generator_base_url``, to an images
server (``tools.generator.images_api``), where the server batches them.
"""

from __future__ import annotations

import time
from pathlib import Path

from langgraph.runtime import Runtime

from graph.context import Context, context_of
from graph.state import Attempt, ImageRef, State, attempts_for, current_step, previous_image
from nodes import events
from tools.generator import diffusion
from tools.generator import models as generator_models
from tools.generator.models import ModelSpec
from tools.generator.images_api import ImagesAPIGenerator, remote_generator
from tools.generator.worker import GeneratorPool, generator_devices, pool_for
from tools.store.images import ImageStore


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


def reference_images(state: State, policy: str, source: ImageRef | None, room: int) -> list[ImageRef]:
    """Extra reference images for an edit under the run's reference policy (SPEC §4 + drift control).

    ``previous`` (the paper) adds none: the edit sees only the image it edits. ``anchor-first``
    adds the sequence's first image (the user's first image, else the first accepted one);
    ``anchor-inputs`` adds the user's input images (without any, it anchors on the first image).
    Images equal to the source are skipped, and at most ``room`` are kept (the model's limit).

    >>> ref = lambda n: {"path": n, "sha256": n, "width": 8, "height": 8}
    >>> state = {"accepted": [{"image": ref("a")}, {"image": ref("b")}], "input_images": []}
    >>> [r["sha256"] for r in reference_images(state, "anchor-first", ref("b"), 3)]
    ['a']
    >>> reference_images(state, "previous", ref("b"), 3)
    []
    """
    if policy == "previous" or source is None or room <= 0:
        return []
    inputs = state.get("input_images", [])
    accepted = [a["image"] for a in state.get("accepted", [])]
    first = inputs[:1] or accepted[:1]
    chosen = inputs if policy == "anchor-inputs" and inputs else first
    unique: list[ImageRef] = []
    for ref in chosen:
        if ref["sha256"] != source["sha256"] and ref["sha256"] not in {u["sha256"] for u in unique}:
            unique.append(ref)
    return unique[:room]


def generation_settings(ctx: Context, spec: ModelSpec) -> dict:
    """The run's size, steps and guidance, where 0 (or -1 for guidance) means the model's default."""
    return {
        "width": ctx.width or spec.width,
        "height": ctx.height or spec.height,
        "steps": ctx.num_inference_steps or spec.steps,
        "guidance": spec.guidance if ctx.guidance_scale < 0 else ctx.guidance_scale,
    }


def generator_pool(ctx: Context) -> GeneratorPool | ImagesAPIGenerator:
    """The run's generator: the images endpoint at ``generator_base_url`` when set (any number of
    GPUs behind it), else one shared pipeline (and batching worker) per device it names, loaded
    on first use with the run's model, LoRA, offload and speedup settings. Both take the same
    requests (``submit``/``run``/``generate_batch``) and know the model's ``spec``."""
    if ctx.generator_base_url:
        return remote_generator(ctx.generator_base_url, ctx.generator_model, ctx.generator_api_key)
    return pool_for(
        [
            diffusion.load_pipeline(
                ctx.generator_model,
                device,
                ctx.dtype,
                lora=ctx.generator_lora or None,
                lora_scale=ctx.generator_lora_scale,
                offload=ctx.generator_offload,
                speedups=ctx.generator_speedups,
                compile_cache=str(Path(ctx.runs_dir) / "_compile_cache"),
            )
            for device in generator_devices(ctx.device)
        ],
        ctx.generator_max_batch,
    )


#: Request keys (``tools.generator``) and the run settings they come from, for error messages.
_SETTING_NAMES = {"steps": "num_inference_steps", "guidance": "guidance_scale"}


def check_generator_settings(ctx: Context) -> None:
    """Refuse, before a run is created, a generator model we cannot run or settings it cannot serve
    (offline and cheap: reads only the model's ``model_index.json`` or its known id)."""
    spec = generator_models.model_spec(ctx.generator_model)
    settings = generation_settings(ctx, spec)
    try:
        generator_models.check_request(
            spec,
            width=settings["width"],
            height=settings["height"],
            steps=settings["steps"],
            guidance=settings["guidance"],
        )
    except ValueError as exc:  # name the setting the user typed, not the request key
        message = str(exc)
        for key, setting in _SETTING_NAMES.items():
            message = message.replace(f"{key}=", f"{setting}=", 1)
        raise ValueError(message) from None


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
    pool = generator_pool(ctx)
    spec = pool.spec
    settings = generation_settings(ctx, spec)
    source_ref = previous_image(state)
    references = reference_images(state, ctx.reference_policy, source_ref, spec.max_images - 1)
    request = dict(
        prompt=prompt,
        seed=seed,
        **settings,
        source=store.load(source_ref) if source_ref else None,
        references=[store.load(ref) for ref in references],
    )

    events.emit(
        runtime,
        events.ATTEMPT_STARTED,
        run_id,
        step_number=number,
        attempt=attempt,
        prompt=prompt,
        seed=seed,
        mode="edit" if source_ref else "text-to-image",
        references=len(references),
    )
    started = time.perf_counter()
    image = pool.run(
        request,
        on_step=lambda done, total: events.emit(
            runtime, events.DENOISE_PROGRESS, run_id, step_number=number, attempt=attempt, done=done, total=total
        ),
    )
    seconds = time.perf_counter() - started
    ref = store.put(image)
    events.emit(
        runtime, events.IMAGE_READY, run_id, step_number=number, attempt=attempt, image=ref, seconds=round(seconds, 3)
    )
    made = Attempt(
        step_number=number,
        attempt=attempt,
        prompt=prompt,
        seed=seed,
        source=source_ref,
        image=ref,
        last_allowed=attempt >= ctx.max_generations_per_step,
        verdict=None,
        generate_s=round(seconds, 3),
        critique_s=None,
    )
    if references:
        made["references"] = references
    return {"attempts": [made]}
