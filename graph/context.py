"""Run settings: the one place environment variables are read.

Every field can be set three ways, weakest first: its default here, an ``INTERLEAVE_<FIELD>``
environment variable (e.g. ``INTERLEAVE_PLANNER_BASE_URL``), and an explicit argument
(``Context(seed=3)``, a CLI flag, or the context form in LangGraph Studio).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from tools.logs import without_credentials
from tools.devices import DTYPES

ENV_PREFIX = "INTERLEAVE_"
SECRET_FIELDS = ("planner_api_key", "critic_api_key", "generator_api_key")
BACKENDS = ("openai", "transformers")
# Settings that may be changed when resuming (where the models are, which device); the rest
# stay as the run started, so a resumed run produces what the uninterrupted one would have.
RESUME_OVERRIDES = (
    "planner_backend",
    "planner_base_url",
    "planner_model",
    "critic_backend",
    "critic_base_url",
    "critic_model",
    "generator_model",
    "generator_base_url",
    "device",
    "vlm_device",
    "vlm_timeout_s",
    "vlm_retries",
    "vlm_max_concurrency",
    "vlm_image_transport",
)
# What a remote caller of a deployed graph (LangGraph server / `langgraph dev`, Studio, the SDK)
# may set in the run context: how the answer is made, never where it is sent or written, which
# model or files the server loads, or a key (metadata "remote" of each field; see RemoteContext).
REMOTE_SETTINGS = (
    "vlm_max_tokens",
    "planner_max_tokens",
    "critic_max_tokens",
    "vlm_temperature",
    "vlm_retries",
    "vlm_retry_backoff_s",
    "vlm_structured_output",
    "vlm_image_max_pixels",
    "critic_unparsed",
    "reference_policy",
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "max_generations_per_step",
    "max_plan_steps",
    "review_plan",
    "seed",
)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Upper bounds of numeric settings (lower bounds are checked in ``__post_init__``); every float
#: must also be finite, so NaN or inf is refused before anything is written.
LIMITS = {
    "vlm_max_tokens": 131072,
    "planner_max_tokens": 131072,
    "critic_max_tokens": 131072,
    "vlm_max_batch": 256,
    "vlm_temperature": 2.0,
    "vlm_timeout_s": 86400.0,
    "vlm_retries": 20,
    "vlm_retry_backoff_s": 3600.0,
    "vlm_max_concurrency": 1024,
    "vlm_image_max_pixels": 64 * 1024 * 1024,
    "generator_lora_scale": 10.0,
    "guidance_scale": 100.0,
    "seed": 2**32 - 1,
    "max_plan_steps": 200,
}


def _env(name: str, default: Any) -> Any:
    """Default for field ``name``: ``INTERLEAVE_<NAME>`` if set, converted to the default's type."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw == "":
        return default
    kind = type(default)
    try:
        if kind is bool:
            spelled = raw.strip().lower()
            if spelled not in _TRUE + _FALSE:
                raise ValueError
            return spelled in _TRUE
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
            + (f" (write one of {', '.join(_TRUE + _FALSE)})" if kind is bool else "")
            + "; fix or unset it"
        ) from None


def _setting(name: str, default: Any, description: str, choices: tuple[str, ...] = ()) -> Any:
    """A field whose default may come from the environment; ``choices`` limits a text setting."""
    return field(
        default_factory=lambda: _env(name, default),
        metadata={"description": description, "choices": choices, "remote": name in REMOTE_SETTINGS},
    )


@dataclass(kw_only=True)
class Context:
    """Settings of one run. Stored with the run (without API keys) so ``resume`` uses the same ones."""

    planner_backend: str = _setting(
        "planner_backend",
        "openai",
        "How the planner runs: openai (an OpenAI-compatible server such as `vllm serve`) or "
        "transformers (in this process; --planner-model is then a model id or local folder).",
        BACKENDS,
    )
    planner_base_url: str = _setting(
        "planner_base_url",
        "http://127.0.0.1:8000/v1",
        "OpenAI-compatible endpoint of the planner VLM (e.g. `vllm serve` at http://HOST:PORT/v1).",
    )
    planner_api_key: str = _setting("planner_api_key", "EMPTY", "API key for the planner endpoint.")
    planner_model: str = _setting(
        "planner_model",
        "Qwen/Qwen3-VL-8B-Instruct",
        "Planner model: the name the endpoint serves, or a model id / folder for transformers.",
    )
    critic_backend: str = _setting(
        "critic_backend", "openai", "How the critic runs: openai or transformers (as for the planner).", BACKENDS
    )
    critic_base_url: str = _setting(
        "critic_base_url", "http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint of the critic VLM."
    )
    critic_api_key: str = _setting("critic_api_key", "EMPTY", "API key for the critic endpoint.")
    critic_model: str = _setting(
        "critic_model",
        "Qwen/Qwen3-VL-8B-Instruct",
        "Critic model: the name the endpoint serves, or a model id / folder for transformers.",
    )
    vlm_device: str = _setting("vlm_device", "auto", "Torch device of in-process (transformers) planner/critic models.")
    vlm_max_tokens: int = _setting("vlm_max_tokens", 4096, "Most new tokens per planner/critic reply.")
    planner_max_tokens: int = _setting(
        "planner_max_tokens", 0, "Most new tokens per planner reply; 0 = vlm_max_tokens."
    )
    critic_max_tokens: int = _setting(
        "critic_max_tokens",
        0,
        "Most new tokens per critic reply (its reasoning is the bulk of all VLM tokens); 0 = "
        "vlm_max_tokens. A reply cut at the budget is parsed like any other (recorded if unusable).",
    )
    vlm_fast_decode: bool = _setting(
        "vlm_fast_decode",
        True,
        "In-process Qwen3-VL models: decode with a static KV cache replayed from a CUDA graph "
        "(85 vs 13 tokens/s at batch 1 for an 8B model on an H200); off = transformers generate.",
    )
    vlm_max_batch: int = _setting(
        "vlm_max_batch",
        32,
        "In-process (transformers) models: most planner/critic calls of this process decoded "
        "together (continuous batching with fast decode, fewer where GPU memory holds fewer; "
        "else one batched generate).",
    )
    vlm_temperature: float = _setting(
        "vlm_temperature",
        0.7,
        "Sampling temperature of planner and critic; a retry after an unusable reply samples at "
        "least at 0.7 so it does not repeat the same reply.",
    )
    vlm_timeout_s: float = _setting("vlm_timeout_s", 600.0, "Seconds to wait for one planner/critic reply.")
    vlm_retries: int = _setting(
        "vlm_retries", 2, "Extra tries when a reply cannot be parsed (re-sampled) or the endpoint fails transiently."
    )
    vlm_retry_backoff_s: float = _setting(
        "vlm_retry_backoff_s", 1.0, "Wait before the first retry; doubles with each further retry."
    )
    vlm_max_concurrency: int = _setting(
        "vlm_max_concurrency", 8, "Most requests in flight at once to one planner/critic endpoint from this process."
    )
    vlm_structured_output: str = _setting(
        "vlm_structured_output",
        "off",
        "Ask the server to constrain replies so they always parse: off, json (a JSON schema for the "
        "answer; vLLM and OpenAI), json_object (the same schema in llama.cpp's form), regex (think + "
        "answer; vLLM only) or auto (json, then json_object, then off, on refusal). See the README.",
        ("off", "json", "json_object", "regex", "auto"),
    )
    vlm_image_transport: str = _setting(
        "vlm_image_transport",
        "data",
        "How images reach the VLMs: data (inline data URLs) or file (file:// URLs, for a vLLM server "
        "on this machine started with --allowed-local-media-path covering the runs folder).",
        ("data", "file"),
    )
    vlm_image_max_pixels: int = _setting(
        "vlm_image_max_pixels",
        1024 * 1024,
        "Larger images are downscaled (aspect kept) before they are sent to a VLM; a message with "
        "5 or more images caps each at 384x384 pixels.",
    )
    critic_unparsed: str = _setting(
        "critic_unparsed",
        "regenerate",
        "What happens when the critic gives no usable verdict after its retries: regenerate (same "
        "prompt, new seed) or accept (keep the image, marked unjudged).",
        ("regenerate", "accept"),
    )
    generator_model: str = _setting(
        "generator_model",
        "black-forest-labs/FLUX.2-klein-4B",
        "Diffusers model id or local folder of the image generator (text-to-image + editing).",
    )
    generator_base_url: str = _setting(
        "generator_base_url",
        "",
        "OpenAI-style images endpoint of the generator (http://HOST:PORT/v1: `interleave serve "
        "generator`, SGLang Diffusion, vLLM-Omni); empty = the pipeline runs in this process. "
        "--generator-model then names the model the server runs (its limits and defaults apply).",
    )
    generator_api_key: str = _setting("generator_api_key", "", "API key for the generator endpoint.")
    device: str = _setting(
        "device",
        "auto",
        "Torch device of the generator: auto, cuda, cuda:1, cpu; all (one pipeline "
        "per visible GPU) or a list such as cuda:0,cuda:1, with each image going to "
        "the least busy GPU.",
    )
    dtype: str = _setting(
        "dtype", "auto", "Generator dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32."
    )
    generator_lora: str = _setting(
        "generator_lora",
        "",
        "LoRA weights (folder, .safetensors file or Hub id) merged into the generator at load time; empty for none.",
    )
    generator_lora_scale: float = _setting("generator_lora_scale", 1.0, "Strength of the LoRA.")
    generator_offload: str = _setting(
        "generator_offload",
        "none",
        "Keep generator weights in CPU memory and move them to the GPU as needed, for small GPUs: "
        "none, model (one component at a time) or sequential (layer by layer; slowest).",
        ("none", "model", "sequential"),
    )
    generator_speedups: str = _setting(
        "generator_speedups",
        "off",
        "FLUX.2-klein on CUDA only: on = compiled blocks and VAE, fused q/k/v, CUDA-graph text "
        "encoder (same images up to bf16 rounding; 0.64x the time of a 1024² image, but the first "
        "call compiles for ~25 s, ~6 s with the compile cache in the runs folder); fp8 = also fp8 "
        "matmuls (0.50x; changes images slightly); off.",
        ("off", "on", "fp8"),
    )
    generator_max_batch: int = _setting(
        "generator_max_batch",
        4,
        "Most compatible generations (same size, steps, input images) that concurrent runs in this "
        "process share in one pipeline call.",
    )
    reference_policy: str = _setting(
        "reference_policy",
        "previous",
        "Images an edit sees: previous (the last accepted image, as in the paper), anchor-first "
        "(also the sequence's first image) or anchor-inputs (also the user's input images), to "
        "resist drift over long chains of edits.",
        ("previous", "anchor-first", "anchor-inputs"),
    )
    width: int = _setting(
        "width", 0, "Image width in pixels; 0 = the model's default (1024 for FLUX.2-klein). A multiple of 16."
    )
    height: int = _setting("height", 0, "Image height in pixels; 0 = the model's default.")
    num_inference_steps: int = _setting(
        "num_inference_steps",
        0,
        "Denoising steps per image; 0 = the model's default (4 for FLUX.2-klein, 40 for Qwen-Image-Edit).",
    )
    guidance_scale: float = _setting(
        "guidance_scale",
        -1.0,
        "Guidance scale; -1 = the model's default (1.0 for FLUX.2-klein, true CFG 4.0 for Qwen-Image-Edit).",
    )
    max_generations_per_step: int = _setting(
        "max_generations_per_step",
        3,
        "Generations per step; the critic judges all but the last, which is accepted as is.",
    )
    review_plan: bool = _setting("review_plan", False, "Pause after planning until the plan is approved or edited.")
    seed: int = _setting("seed", 0, "Run seed; each step and attempt derives its own seed from it.")
    max_plan_steps: int = _setting(
        "max_plan_steps",
        30,
        "Most steps a plan may have (a longer plan is an unusable planner reply); the paper's "
        "trajectories run to about 25 generator calls.",
    )
    runs_dir: str = _setting("runs_dir", "runs", "Folder for the run database, image store and documents.")

    def __post_init__(self) -> None:
        problems = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{item.name}={value} must be a finite number")
            elif (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and item.name in LIMITS
                and value > LIMITS[item.name]
            ):
                problems.append(f"{item.name}={value} is over its limit {LIMITS[item.name]}")
        if self.seed < 0 or self.vlm_temperature < 0 or self.max_plan_steps < 1:
            problems.append("seed and vlm_temperature must be >= 0 and max_plan_steps >= 1")
        if problems:  # NaN breaks the comparisons below: report these first
            raise ValueError("invalid run settings: " + "; ".join(problems))
        for name in ("width", "height"):
            value = getattr(self, name)
            if value and (value < 16 or value % 16):
                problems.append(
                    f"{name}={value} must be a positive multiple of 16 (e.g. 1024), or 0 for the model's default"
                )
        if self.width * self.height > 4096 * 4096:
            problems.append(f"{self.width}x{self.height} is over 16.8 megapixels; use at most 4096x4096")
        if not 0 <= self.num_inference_steps <= 500:
            problems.append(
                f"num_inference_steps={self.num_inference_steps} must be between 1 and "
                f"500, or 0 for the model's default"
            )
        if self.guidance_scale < 0 and self.guidance_scale != -1:
            problems.append(f"guidance_scale={self.guidance_scale} must be >= 0, or -1 for the model's default")
        if not 1 <= self.generator_max_batch <= 64:
            problems.append(f"generator_max_batch={self.generator_max_batch} must be between 1 and 64")
        if not 1 <= self.max_generations_per_step <= 20:
            problems.append(f"max_generations_per_step={self.max_generations_per_step} must be between 1 and 20")
        if self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r} must be one of {', '.join(DTYPES)}")
        for item in dataclasses.fields(self):
            choices = item.metadata.get("choices")
            if choices and getattr(self, item.name) not in choices:
                problems.append(f"{item.name}={getattr(self, item.name)!r} must be one of {', '.join(choices)}")
        if self.vlm_max_concurrency < 1 or self.vlm_retry_backoff_s < 0:
            problems.append("vlm_max_concurrency must be >= 1 and vlm_retry_backoff_s >= 0")
        if self.planner_max_tokens < 0 or self.critic_max_tokens < 0 or self.vlm_max_batch < 1:
            problems.append(
                "planner_max_tokens and critic_max_tokens must be >= 0 (0 = vlm_max_tokens) and vlm_max_batch >= 1"
            )
        if self.vlm_image_max_pixels < 64 * 64:
            problems.append(f"vlm_image_max_pixels={self.vlm_image_max_pixels} is too small; use at least 4096 (64x64)")
        if self.vlm_max_tokens < 1 or self.vlm_retries < 0 or self.vlm_timeout_s <= 0:
            problems.append("vlm_max_tokens must be >= 1, vlm_retries >= 0 and vlm_timeout_s > 0")
        if self.generator_base_url and not self.generator_base_url.startswith(("http://", "https://")):
            problems.append(
                f"generator_base_url={self.generator_base_url!r} must be an http(s) URL "
                f"such as http://127.0.0.1:8000/v1, or empty for the in-process generator"
            )
        for role in ("planner", "critic"):
            name = f"{role}_base_url"
            if getattr(self, f"{role}_backend") == "openai" and not getattr(self, name).startswith(
                ("http://", "https://")
            ):
                problems.append(
                    f"{name}={getattr(self, name)!r} must be an http(s) URL such as http://127.0.0.1:8000/v1"
                )
        if problems:
            raise ValueError("invalid run settings: " + "; ".join(problems))

    def to_record(self) -> dict[str, Any]:
        """Settings to store with a run: everything except secrets (keys, and any user:password
        inside a base URL)."""
        return {
            k: without_credentials(v) if k.endswith("_base_url") else v
            for k, v in dataclasses.asdict(self).items()
            if k not in SECRET_FIELDS
        }

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """The JSON schema a LangGraph server publishes as the context form (Studio, ``GET
        /assistants/{id}/schemas``): every field with its description, its ``default`` as this
        process resolves it (``INTERLEAVE_*`` included; never a key's, and a URL without its
        credentials) and, for a choice, its ``enum``. ``RemoteContext`` lists only what a
        remote caller may set; a request naming any other is refused at the server's edge
        (``graph.server``, 422) before the server stores it."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        remote_only = issubclass(cls, RemoteContext)
        properties = {}
        for item in dataclasses.fields(Context):
            prop = schema.get("properties", {}).get(item.name)
            if prop is None or (remote_only and not item.metadata.get("remote")):
                continue
            if item.name not in SECRET_FIELDS:
                try:
                    default = item.default_factory()  # type: ignore[misc]
                except ValueError:  # a bad INTERLEAVE_* value: reported when a run starts
                    default = None
                if default is not None:
                    prop["default"] = without_credentials(default) if item.name.endswith("_base_url") else default
            if item.metadata.get("choices"):
                prop["enum"] = list(item.metadata["choices"])
            properties[item.name] = prop
        schema["properties"] = properties
        schema.pop("required", None)
        return schema

    @classmethod
    def from_record(cls, record: dict[str, Any], **overrides: Any) -> "Context":
        """Rebuild stored settings (secrets come from the environment again); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in names and k not in SECRET_FIELDS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class RemoteContext(Context):
    """The context of the graph a LangGraph server exports (``langgraph.json``): built from what
    a remote caller sends, so only settings whose metadata says ``remote`` may be given; the
    rest (endpoints, keys, models, devices, the runs folder) come from the server's own
    environment. A caller can therefore never point the server's API key at a URL of its own
    choosing, nor make the server read or write files it names."""

    def __init__(self, **values: Any) -> None:
        refused = sorted(set(values) - set(REMOTE_SETTINGS))
        if refused:  # names only: a refused value may be a key, and errors end up in logs
            raise ValueError(remote_refusal(refused))
        super().__init__(**values)
        self._given = tuple(sorted(values))

    def caller_settings(self) -> dict[str, Any]:
        """The settings the remote caller gave (the rest are defaults of the server)."""
        return {name: getattr(self, name) for name in getattr(self, "_given", ())}


def environment_settings(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The settings among ``names`` that this process's environment sets (``INTERLEAVE_<NAME>``),
    converted to their types: on a LangGraph server, what its operator says now."""
    fields = {f.name: f for f in dataclasses.fields(Context)}
    return {
        name: fields[name].default_factory()  # type: ignore[misc]
        for name in names
        if os.environ.get(ENV_PREFIX + name.upper())
    }


def remote_refusal(refused: list[str], where: str = "the run context") -> str:
    """The error for settings a remote caller sent but may not set: names only, never a value
    (a refused value may be a key, and errors end up in logs and stored records)."""
    return (
        f"a remote caller may not set {', '.join(refused)} in {where}; the server's operator "
        f"sets them (INTERLEAVE_* in the server's environment). Settable remotely: "
        f"{', '.join(sorted(REMOTE_SETTINGS))}"
    )


def default_runs_dir() -> str:
    """Where runs live unless --runs-dir says otherwise: $INTERLEAVE_RUNS_DIR or ./runs."""
    return _env("runs_dir", "runs")


def context_of(runtime: Any) -> Context:
    """The run's Context from a LangGraph runtime (a dict from Studio is accepted, None gives defaults)."""
    ctx = getattr(runtime, "context", None)
    if ctx is None:
        return Context()
    if isinstance(ctx, dict):
        return Context(**ctx)
    return ctx
