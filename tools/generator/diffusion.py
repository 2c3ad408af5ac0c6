"""The image generator: a diffusers pipeline, loaded once per process by model id or local folder.

Step 1 of a trajectory is text-to-image; every later step edits the previously accepted image,
optionally with more reference images. Which diffusers class runs the model, and how its
``__call__`` spells guidance, sizes and input images, comes from the one table in
``tools.generator.models``; this module only loads (once, with optional LoRA and CPU offload)
and calls. Every request is checked against the model's limits before any pipeline work, so a
bad size or step count fails in microseconds with a message that says what to change, not after
the text encoder has run on the GPU.

torch and diffusers are imported only when a pipeline is first needed, so importing the graph
stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from tools import devices
from tools.generator import models as generator_models
from tools.generator.models import ModelSpec

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "sequential")
REQUEST_KEYS = {"prompt", "seed", "width", "height", "steps", "guidance", "source", "references", "on_step"}

_pipelines: dict[tuple[Any, ...], Any] = {}
_load_lock = threading.Lock()
# One generation at a time per pipeline: diffusers pipelines hold per-call state (scheduler
# timesteps) and are not safe to call from several threads at once.
_call_locks: dict[int, threading.Lock] = {}


class GeneratorLoadError(RuntimeError):
    """The generator model could not be loaded; the message says how to fix it."""


def derive_seed(run_seed: int, step_number: int, attempt: int) -> int:
    """A stable seed per (run seed, step, attempt), so a re-run reproduces every image.

    >>> derive_seed(0, 1, 1) == derive_seed(0, 1, 1) != derive_seed(0, 1, 2)
    True
    """
    digest = hashlib.sha256(f"{run_seed}:{step_number}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """Resolved device and dtype names (``tools.devices``), refusals as a GeneratorLoadError."""
    try:
        resolved = devices.resolve_device(device)
        return resolved, devices.resolve_dtype(dtype, resolved)
    except ValueError as exc:
        raise GeneratorLoadError(f"{exc} (settings device / dtype)") from None


def silence_library_progress_bars() -> None:
    """diffusers' and transformers' own progress bars would tear through the CLI's display."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    lora: str | None = None,
    lora_scale: float = 1.0,
    offload: str = "none",
    speedups: str = "off",
    compile_cache: str | None = None,
) -> Any:
    """Return the pipeline for ``model`` on ``device``, loading it on first use only.

    ``model`` is a Hub id or a folder written by ``save_pretrained``; it must belong to one of
    the families in ``tools.generator.models.FAMILIES`` and is loaded with that family's own
    diffusers class.

    ``lora``: a folder (or ``.safetensors`` file, or Hub id) of LoRA weights in a format
    diffusers reads for this pipeline. It is merged into the transformer at ``lora_scale`` once,
    at load time, so generation costs the same as without it; another scale is another cached
    pipeline (and another copy of the weights in memory).

    ``offload``: "none" moves the whole pipeline to ``device``; "model" keeps the weights in CPU
    memory and moves one component at a time to the GPU while it runs (diffusers'
    ``enable_model_cpu_offload``: little slower, needs about the largest component's memory);
    "sequential" streams every layer on its own (``enable_sequential_cpu_offload``: very slow,
    least memory). Offload needs an accelerator: asking for it on a CPU device is an error rather
    than a silent no-op, since on CPU the weights already live in CPU memory.

    ``speedups`` ("off", "on", "fp8"): for FLUX.2-klein on a CUDA device without offload, apply
    ``tools.generator.klein_speed.optimize_pipeline`` (fp8 matmuls too with "fp8"), keeping compiled
    artifacts in ``compile_cache`` so later processes skip most of the compile time. Ignored
    (logged) for other families, devices or with offload.
    """
    if offload not in OFFLOAD_MODES:
        raise GeneratorLoadError(f"offload={offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
    device, dtype_name = _device_and_dtype(device, dtype)
    if offload != "none" and device == "cpu":
        raise GeneratorLoadError(
            f"offload={offload!r} moves weights between CPU memory and a GPU, but the generator runs "
            f"on the CPU; use offload='none' there, or run on a GPU machine"
        )
    torch_dtype = devices.torch_dtype(dtype_name)
    key = (model, device, dtype_name, lora, float(lora_scale), offload, speedups)
    with _load_lock:
        if key in _pipelines:
            return _pipelines[key]
        try:
            spec = generator_models.model_spec(model)
        except generator_models.UnsupportedModelError as exc:
            raise GeneratorLoadError(f"generator model could not be loaded: {exc} (setting generator_model)") from None
        import diffusers

        silence_library_progress_bars()
        pipeline_class = getattr(diffusers, spec.pipeline_class)
        log.info("loading generator %s (%s) on %s (%s, offload=%s)", model, spec.family, device, torch_dtype, offload)
        try:
            pipe = pipeline_class.from_pretrained(model, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            local = Path(model).exists()
            hint = (
                "the folder exists but is not a complete diffusers pipeline"
                if local
                else "it is neither a local folder nor reachable on the Hugging Face Hub"
            )
            raise GeneratorLoadError(
                f"generator model {model!r} could not be loaded: {hint}. Set generator_model to a "
                f"diffusers model id or a folder saved by save_pretrained. ({exc})"
            ) from exc
        if lora:
            _merge_lora(pipe, lora, lora_scale, spec)
        if offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        if speedups != "off":
            _speed_up(pipe, spec, device, offload, fp8=speedups == "fp8", cache_dir=compile_cache)
        _pipelines[key] = pipe
        _call_locks[id(pipe)] = threading.Lock()
        return pipe


def register_pipeline(model: str, pipe: Any, device: str = "auto", dtype: str = "auto") -> Any:
    """Put a pipeline built in memory under ``model`` in the cache, so runs whose generator model
    is ``model`` use it without loading anything (benchmarks on random weights at full size)."""
    device, dtype_name = _device_and_dtype(device, dtype)
    key = (model, device, dtype_name, None, 1.0, "none", "off")
    with _load_lock:
        pipe.set_progress_bar_config(disable=True)
        _pipelines[key] = pipe
        _call_locks[id(pipe)] = threading.Lock()
    return pipe


def _speed_up(pipe: Any, spec: ModelSpec, device: str, offload: str, *, fp8: bool, cache_dir: str | None) -> None:
    if not spec.family.startswith("klein") or not device.startswith("cuda") or offload != "none":
        log.info(
            "generator speedups apply to FLUX.2-klein on CUDA without offload; skipped for %s on %s (offload=%s)",
            spec.family,
            device,
            offload,
        )
        return
    from tools.generator.klein_speed import optimize_pipeline

    applied = optimize_pipeline(pipe, fp8=fp8, cache_dir=cache_dir)
    log.info("generator speedups applied: %s", ", ".join(applied))


def _merge_lora(pipe: Any, lora: str, scale: float, spec: ModelSpec) -> None:
    """Load LoRA weights with diffusers' own loader and fuse them into the transformer."""
    file = Path(lora)
    where = dict(weight_name=file.name) if file.is_file() else {}
    try:
        pipe.load_lora_weights(str(file.parent) if file.is_file() else lora, adapter_name="lora", **where)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise GeneratorLoadError(
            f"LoRA {lora!r} could not be loaded onto the {spec.family} pipeline "
            f"({spec.pipeline_class}): {exc}. Pass a folder or .safetensors file of LoRA weights "
            f"trained for this model (diffusers, PEFT or kohya format)."
        ) from exc
    pipe.fuse_lora(lora_scale=scale, adapter_names=["lora"])
    pipe.unload_lora_weights()  # drops the LoRA layers; the fused weights stay


def _request_images(request: dict[str, Any]) -> list[Image.Image]:
    from tools.store.images import to_rgb

    images = [request["source"]] if request.get("source") is not None else []
    images += list(request.get("references") or [])
    return [to_rgb(image) if isinstance(image, Image.Image) else image for image in images]


def _checked(spec: ModelSpec, request: dict[str, Any], number: int) -> tuple[dict[str, Any], list]:
    unknown = set(request) - REQUEST_KEYS
    if unknown:
        raise ValueError(
            f"generation request {number} has unknown keys {sorted(unknown)}; allowed: {sorted(REQUEST_KEYS)}"
        )
    missing = {"prompt", "seed", "width", "height", "steps", "guidance"} - set(request)
    if missing:
        raise ValueError(f"generation request {number} lacks {sorted(missing)}")
    if not isinstance(request["prompt"], str):
        raise ValueError(
            f"generation request {number}: prompt must be a string, got {type(request['prompt']).__name__}"
        )
    images = _request_images(request)
    generator_models.check_request(
        spec,
        width=request["width"],
        height=request["height"],
        steps=request["steps"],
        guidance=request["guidance"],
        n_images=len(images),
    )
    generator_models.check_images(spec, images)
    return request, images


def _images_key(images: list[Image.Image]) -> tuple:
    return tuple((image.size, hashlib.sha256(image.tobytes()).hexdigest()) for image in images)


def generate_batch(pipe: Any, requests: list[dict[str, Any]]) -> list[Image.Image]:
    """Run several generations, in as few pipeline calls as the model allows; results in order.

    Each request is a dict with the keyword arguments of ``generate`` (prompt, seed, width,
    height, steps, guidance, and optionally source, references, on_step). All are checked before
    any pipeline work. Requests with the same size, steps, guidance and the same input images
    (compared by pixels) share one call: a list of prompts with one torch.Generator per request,
    so each image comes from its own seed. The batched image equals the one-by-one image up to
    rounding (batched matrix products round differently): measured on the tiny klein, at most
    1 grey level on a few pixels in float32 on CPU, up to 6 in bfloat16 on an H200. So a re-run
    reproduces an image bit for bit only with the same batch composition.

    Edits with different source images are not batched: klein treats a list of images as
    references for every prompt, not one image per prompt, so they run one call each.
    QwenImageEditPlusPipeline refuses any batch, so it always loops.
    """
    spec = generator_models.spec_for_pipeline(pipe)
    checked = [_checked(spec, request, number) for number, request in enumerate(requests, 1)]
    groups: dict[tuple, list[int]] = {}
    for index, (request, images) in enumerate(checked):
        key = (request["width"], request["height"], request["steps"], float(request["guidance"]), _images_key(images))
        if not spec.batch_prompts:
            key = (index,)
        groups.setdefault(key, []).append(index)
    results: list[Image.Image | None] = [None] * len(requests)
    for indices in groups.values():
        batch = [checked[i][0] for i in indices]
        for index, image in zip(indices, _run(pipe, spec, batch, checked[indices[0]][1])):
            results[index] = image
    return results  # type: ignore[return-value]


def generate_isolating_failures(
    pipe: Any, requests: list[dict[str, Any]]
) -> tuple[list[Image.Image | Exception], list[int]]:
    """``generate_batch``, where a failure is only its own request's: if the batch fails, each
    request runs again on its own, so one bad request (or one too many for memory) cannot fail
    the others. Returns each request's image or exception, in order, and the sizes of the
    pipeline batches that succeeded. Both batchers use it: ``tools.generator.worker`` and the
    ``@serve.batch`` of ``tools.generator.ray_serve``."""
    try:
        return list(generate_batch(pipe, requests)), [len(requests)]
    except Exception as exc:  # noqa: BLE001 -- handed back with its request, never lost
        if len(requests) == 1:
            return [exc], []
        log.info("batch of %d failed (%s); running its requests one by one", len(requests), exc)
    results: list[Image.Image | Exception] = []
    sizes: list[int] = []
    for request in requests:
        try:
            results.append(generate_batch(pipe, [request])[0])
            sizes.append(1)
        except Exception as single:  # noqa: BLE001
            results.append(single)
    return results, sizes


def _run(pipe: Any, spec: ModelSpec, batch: list[dict[str, Any]], images: list[Image.Image]) -> list[Image.Image]:
    """One pipeline call for requests that share size, steps, guidance and input images."""
    import torch

    first = batch[0]
    device = pipe._execution_device
    generator_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(device=generator_device).manual_seed(int(r["seed"])) for r in batch]
    steps = first["steps"]
    listeners = [r["on_step"] for r in batch if r.get("on_step") is not None]

    def callback(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        for on_step in listeners:
            on_step(index + 1, steps)
        return kwargs

    single = len(batch) == 1
    call = generator_models.call_kwargs(
        spec,
        prompt=first["prompt"] if single else [r["prompt"] for r in batch],
        width=first["width"],
        height=first["height"],
        steps=steps,
        guidance=first["guidance"],
        images=images,
        generator=generators[0] if single else generators,
    )
    call["callback_on_step_end"] = callback
    from tools.devices import capture_lock

    # A VLM's CUDA-graph capture on this GPU (another thread) must not overlap this call.
    with _call_locks.setdefault(id(pipe), threading.Lock()), capture_lock(device), torch.inference_mode():
        result = pipe(**call)
    return list(result.images)


def generate(
    pipe: Any,
    *,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    source: Image.Image | None = None,
    references: list[Image.Image] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Run one generation: text-to-image without input images, else an edit of ``source``.

    ``references`` are extra input images after ``source`` for models that take several (klein:
    up to 4 in all, Qwen-Image-Edit: 3, Kontext: only the source). The request is checked against
    the model's limits (size multiple, pixels, steps, number of images) first; a ValueError names
    the bad value and the fix. ``on_step(done, total)`` is called after each denoising step.
    """
    return generate_batch(
        pipe,
        [
            dict(
                prompt=prompt,
                seed=seed,
                width=width,
                height=height,
                steps=steps,
                guidance=guidance,
                source=source,
                references=references,
                on_step=on_step,
            )
        ],
    )[0]
