"""The image generator: a diffusers pipeline, loaded once per process by model id or local folder.

Step 1 of a trajectory is text-to-image; every later step edits the previously accepted image
(the same pipeline call with ``image=``), which is how FLUX.2 [klein] works. torch and diffusers
are imported only when a pipeline is first needed, so importing the graph stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

_pipelines: dict[tuple[str, str, str], Any] = {}
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeneratorLoadError(f"device {device!r} was asked for but CUDA is not available; "
                                 f"use --device cpu (slow) or run on a GPU machine")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def silence_library_progress_bars() -> None:
    """diffusers' and transformers' own progress bars would tear through the CLI's display."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> Any:
    """Return the pipeline for ``model`` on ``device``, loading it on first use only."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (model, device, str(torch_dtype))
    with _load_lock:
        if key in _pipelines:
            return _pipelines[key]
        from diffusers import DiffusionPipeline

        silence_library_progress_bars()

        log.info("loading generator %s on %s (%s)", model, device, torch_dtype)
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            local = Path(model).exists()
            hint = ("the folder exists but is not a complete diffusers pipeline (no model_index.json?)"
                    if local else "it is neither a local folder nor reachable on the Hugging Face Hub")
            raise GeneratorLoadError(
                f"generator model {model!r} could not be loaded: {hint}. Pass --generator-model with a "
                f"diffusers model id or a folder saved by save_pretrained. ({exc})") from exc
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _pipelines[key] = pipe
        _call_locks[id(pipe)] = threading.Lock()
        return pipe


def generate(pipe: Any, *, prompt: str, seed: int, width: int, height: int, steps: int,
             guidance: float, source: Image.Image | None = None,
             on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """Run one generation: text-to-image when ``source`` is None, else an edit of ``source``.

    ``on_step(done, total)`` is called after each denoising step.
    """
    import torch

    device = pipe._execution_device
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)

    def callback(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(index + 1, steps)
        return kwargs

    call: dict[str, Any] = dict(prompt=prompt, width=width, height=height, num_inference_steps=steps,
                                guidance_scale=guidance, generator=generator,
                                callback_on_step_end=callback)
    if source is not None:
        call["image"] = source
    with _call_locks.setdefault(id(pipe), threading.Lock()), torch.inference_mode():
        result = pipe(**call)
    return result.images[0]
