"""Which image models the generator supports, their defaults and limits: one table, no torch.

Every family we support is one row of ``FAMILIES``: the diffusers pipeline class that runs it,
the settings its authors recommend, how its ``__call__`` spells guidance, and the limits we
check before any GPU work (sizes, steps, number of input images). The generator
(``tools.generator.diffusion``) reads the row for the loaded pipeline and translates one request into
that pipeline's keyword arguments with ``call_kwargs``; nothing else in the product needs to
know which model is behind the generator.

Why each number is what it is (read from the diffusers 0.42.1 pipeline code and the model cards):

* Size multiple 16 for every family: each pipeline packs latents in 2x2 patches over a VAE with
  8x downsampling (``vae_scale_factor * 2``); other sizes would be silently rounded down.
* Input images: ``Flux2KleinPipeline`` takes a list of reference images and refuses one under
  64 px a side or with an aspect ratio over 8:1; BFL documents up to 4 references for klein.
  ``QwenImageEditPlusPipeline`` (2509 and 2511) takes a list; Qwen recommends 1 to 3.
  ``FluxKontextPipeline`` conditions on one image only (a list is silently cut to its first).
* Text-to-image: klein and Kontext run without an image (Kontext then behaves as FLUX.1-dev).
  ``QwenImageEditPlusPipeline`` crashes on ``image=None`` (it reads ``image.size`` first), so
  step 1 with it edits a white canvas of the requested size -- the same white canvas the critic
  is shown as the "before" image of step 1 (``tools.store.images.blank_canvas``).
* Guidance: klein and Kontext take ``guidance_scale`` (distilled klein ignores it; klein base
  runs CFG against an empty prompt on its own). Qwen-Image-Edit uses true CFG: ``true_cfg_scale``
  only acts together with a negative prompt, and its model card uses ``" "``.
* Kontext rescales ``width x height`` to ``max_area`` (default 1024x1024) keeping the aspect
  ratio, so the requested area is passed as ``max_area`` to get exactly the requested size.
* Batching: klein and Kontext accept a list of prompts with a list of generators (one seed per
  image); ``QwenImageEditPlusPipeline`` refuses a batch larger than 1.
* Max pixels are our limits, not the pipelines': past them each model is outside its training
  range and attention memory grows with the square of the token count. FLUX.2 is documented up
  to 4 MP; Qwen-Image and Kontext train around 1 MP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tools.store.images import blank_canvas

MODEL_INDEX = "model_index.json"


class UnsupportedModelError(ValueError):
    """The model is not one of the supported families; the message lists them."""


@dataclass(frozen=True)
class ModelSpec:
    family: str
    pipeline_class: str  # the diffusers class, by name (the table must not import diffusers)
    model_ids: tuple[str, ...]  # Hub ids known to belong to this family
    width: int  # recommended defaults
    height: int
    steps: int
    guidance: float
    guidance_kwarg: str  # "guidance_scale" or "true_cfg_scale"
    negative_prompt: str | None  # passed when guidance_kwarg is true CFG and guidance > 1
    size_multiple: int
    max_pixels: int
    step_range: tuple[int, int]
    max_images: int  # input images an edit accepts: source plus extra references
    text_to_image: str  # "native" (image=None works) or "blank-canvas" (edit a white canvas)
    batch_prompts: bool  # several prompts (one generator each) in one pipeline call
    area_kwarg: str | None = None  # pipeline argument that must carry width * height
    min_input_side: int = 32
    max_input_aspect: float = 8.0


FAMILIES: dict[str, ModelSpec] = {
    spec.family: spec
    for spec in (
        ModelSpec(
            family="klein",
            pipeline_class="Flux2KleinPipeline",
            model_ids=("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B"),
            width=1024,
            height=1024,
            steps=4,
            guidance=1.0,
            guidance_kwarg="guidance_scale",
            negative_prompt=None,
            size_multiple=16,
            max_pixels=2048 * 2048,
            step_range=(1, 50),
            max_images=4,
            text_to_image="native",
            batch_prompts=True,
            min_input_side=64,
        ),
        ModelSpec(
            family="klein-base",
            pipeline_class="Flux2KleinPipeline",
            model_ids=("black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-base-9B"),
            width=1024,
            height=1024,
            steps=50,
            guidance=4.0,
            guidance_kwarg="guidance_scale",
            negative_prompt=None,
            size_multiple=16,
            max_pixels=2048 * 2048,
            step_range=(1, 200),
            max_images=4,
            text_to_image="native",
            batch_prompts=True,
            min_input_side=64,
        ),
        ModelSpec(
            family="qwen-image-edit",
            pipeline_class="QwenImageEditPlusPipeline",
            model_ids=("Qwen/Qwen-Image-Edit-2511", "Qwen/Qwen-Image-Edit-2509"),
            width=1024,
            height=1024,
            steps=40,
            guidance=4.0,
            guidance_kwarg="true_cfg_scale",
            negative_prompt=" ",
            size_multiple=16,
            max_pixels=1536 * 1536,
            step_range=(1, 200),
            max_images=3,
            text_to_image="blank-canvas",
            batch_prompts=False,
        ),
        ModelSpec(
            family="kontext",
            pipeline_class="FluxKontextPipeline",
            model_ids=("black-forest-labs/FLUX.1-Kontext-dev",),
            width=1024,
            height=1024,
            steps=28,
            guidance=2.5,
            guidance_kwarg="guidance_scale",
            negative_prompt=None,
            size_multiple=16,
            max_pixels=1536 * 1536,
            step_range=(1, 200),
            max_images=1,
            text_to_image="native",
            batch_prompts=True,
            area_kwarg="max_area",
        ),
    )
}


def _supported() -> str:
    return "; ".join(f"{s.family} ({s.pipeline_class}: {', '.join(s.model_ids)})" for s in FAMILIES.values())


def spec_for_class(class_name: str, *, is_distilled: bool = False) -> ModelSpec:
    """The family of a diffusers pipeline class; klein splits on ``is_distilled`` like the pipeline."""
    if class_name == "Flux2KleinPipeline":
        return FAMILIES["klein" if is_distilled else "klein-base"]
    for spec in FAMILIES.values():
        if spec.pipeline_class == class_name:
            return spec
    raise UnsupportedModelError(
        f"pipeline class {class_name!r} is not a supported generator. Supported families: "
        f"{_supported()}. Use a model of one of these classes."
    )


def spec_for_pipeline(pipe: Any) -> ModelSpec:
    """The family of a loaded pipeline object (by its class, so subclasses and in-memory ones work)."""
    for cls in type(pipe).__mro__:
        try:
            return spec_for_class(cls.__name__, is_distilled=bool(getattr(pipe, "config", {}).get("is_distilled")))
        except UnsupportedModelError:
            continue
    return spec_for_class(type(pipe).__name__)  # raises with the list of families


def _index_file(model: str) -> Path | None:
    """model_index.json of a local folder, or of a Hub repo already in the local cache (offline)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder / MODEL_INDEX
    if model.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, MODEL_INDEX)
        if isinstance(cached, str):
            return Path(cached)
    return None


def model_spec(model: str) -> ModelSpec:
    """The family of ``model``: a local diffusers folder, a cached Hub repo, or a known Hub id.

    A folder is recognised by the ``_class_name`` in its ``model_index.json``, so a fine-tune
    saved with ``save_pretrained`` works under any name. Never touches the network.
    """
    index_file = _index_file(model)
    if index_file is not None:
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            class_name = index["_class_name"]
        except FileNotFoundError:
            raise UnsupportedModelError(
                f"folder {model!r} has no {MODEL_INDEX}, so it is not a diffusers "
                f"pipeline. Pass a folder written by save_pretrained or a Hub id."
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UnsupportedModelError(
                f"{index_file} cannot be read as a diffusers model index ({exc!r}); re-save the "
                f"pipeline with save_pretrained or download it again."
            ) from None
        try:
            return spec_for_class(class_name, is_distilled=bool(index.get("is_distilled")))
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{model!r}: {exc}") from None
    for spec in FAMILIES.values():
        if model.lower() in (known.lower() for known in spec.model_ids):
            return spec
    if Path(model).is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise UnsupportedModelError(
            f"folder {model!r} does not exist; check the path, or pass a "
            f"Hub id such as {FAMILIES['klein'].model_ids[0]}"
        )
    raise UnsupportedModelError(
        f"{model!r} is neither a local diffusers folder nor a known model id. "
        f"Supported families: {_supported()}. Pass one of these ids, or a folder saved with "
        f"save_pretrained from one of these pipeline classes."
    )


def check_request(
    spec: ModelSpec, *, width: int, height: int, steps: int, guidance: float = 1.0, n_images: int = 0
) -> None:
    """Refuse a request the model cannot serve, naming the bad value and the fix.

    ``n_images`` counts every input image: the source being edited plus extra references.

    >>> check_request(FAMILIES["klein"], width=1000, height=1024, steps=4)
    Traceback (most recent call last):
    ...
    ValueError: width=1000 is not a multiple of 16 for klein; use 992 or 1008
    """
    multiple = spec.size_multiple
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value < multiple:
            raise ValueError(
                f"{name}={value!r} must be an integer of at least {multiple} for {spec.family}; use e.g. {spec.width}"
            )
        if value % multiple:
            low = value // multiple * multiple
            raise ValueError(
                f"{name}={value} is not a multiple of {multiple} for {spec.family}; use {low} or {low + multiple}"
            )
    if width * height > spec.max_pixels:
        side = math.isqrt(spec.max_pixels)
        raise ValueError(
            f"{width}x{height} is {width * height:,} pixels, over the {spec.max_pixels:,} "
            f"that {spec.family} is run at; use at most about {side}x{side} (e.g. "
            f"{spec.width}x{spec.height})"
        )
    low, high = spec.step_range
    if not isinstance(steps, int) or isinstance(steps, bool) or not low <= steps <= high:
        raise ValueError(
            f"steps={steps!r} is outside {low}..{high} for {spec.family}; its recommended value is {spec.steps}"
        )
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise ValueError(
            f"guidance={guidance!r} must be a finite number >= 0; {spec.family} recommends {spec.guidance}"
        )
    if n_images > spec.max_images:
        raise ValueError(
            f"{n_images} input images (source + references) are more than "
            f"{spec.family} takes ({spec.max_images}); drop {n_images - spec.max_images} "
            f"of the references"
        )


def check_images(spec: ModelSpec, images: Sequence[Image.Image]) -> None:
    """Refuse input images the pipeline would reject halfway through (or crash on)."""
    for number, image in enumerate(images, 1):
        if not isinstance(image, Image.Image):
            raise ValueError(
                f"input image {number} is a {type(image).__name__}, not a PIL image; "
                f"load it with tools.store.images.load_input_image"
            )
        width, height = image.size
        if min(width, height) < spec.min_input_side:
            raise ValueError(
                f"input image {number} is {width}x{height}; {spec.family} needs at "
                f"least {spec.min_input_side} px on each side: upscale it"
            )
        if max(width / height, height / width) > spec.max_input_aspect:
            raise ValueError(
                f"input image {number} is {width}x{height}, an aspect ratio over "
                f"{spec.max_input_aspect:g}:1 that {spec.family} refuses; crop it"
            )


def call_kwargs(
    spec: ModelSpec,
    *,
    prompt: str | list[str],
    width: int,
    height: int,
    steps: int,
    guidance: float,
    images: Sequence[Image.Image],
    generator: Any,
) -> dict[str, Any]:
    """The pipeline keyword arguments for one request (or a batch of prompts sharing its images).

    >>> kw = call_kwargs(FAMILIES["qwen-image-edit"], prompt="p", width=64, height=64, steps=2,
    ...                  guidance=4.0, images=[], generator=None)
    >>> kw["true_cfg_scale"], kw["negative_prompt"], kw["image"][0].size
    (4.0, ' ', (64, 64))
    """
    kwargs: dict[str, Any] = dict(
        prompt=prompt, width=width, height=height, num_inference_steps=steps, generator=generator
    )
    kwargs[spec.guidance_kwarg] = guidance
    if spec.negative_prompt is not None and guidance > 1:
        negative = spec.negative_prompt
        kwargs["negative_prompt"] = [negative] * len(prompt) if isinstance(prompt, list) else negative
    if spec.area_kwarg:
        kwargs[spec.area_kwarg] = width * height
    if images:
        kwargs["image"] = images[0] if spec.max_images == 1 else list(images)
    elif spec.text_to_image == "blank-canvas":
        kwargs["image"] = [blank_canvas(width, height)]
    return kwargs
