"""Planner and critic VLMs run in this process with transformers, as a LangChain chat model.

Why: the OpenAI-compatible route needs a server (vLLM) next to the graph. On a GPU machine
without one, in tests, and in the training loop's own process, the model can run here
instead, behind the same ``BaseChatModel`` interface the nodes already use: messages in
(system/human/ai, content as a string or OpenAI-style parts with ``image_url`` data URLs),
an ``AIMessage`` out with ``finish_reason`` and token counts.

How:
- Weights and processor load lazily, on first use, once per process for each
  (path, device, dtype): a module-level cache shared by every ``TransformersChatModel``
  instance, so the planner and critic on one checkpoint hold one copy.
- ``batch([...])`` runs ONE left-padded ``generate`` call for all inputs (the model is
  memory-bandwidth bound while decoding, so a batch of 8 costs little more than one reply).
  Greedy results equal the one-by-one results.
- ``generate`` runs under a per-model lock (the model keeps multimodal-RoPE state between
  steps), so the chat model may be called from many threads.
- torch and transformers are imported inside functions: importing this module is cheap.

Qwen-VL processors want a video processor whose class needs torchvision; where torchvision
is missing (CPU installs) an images-only processor is assembled from the folder's tokenizer
and image processor instead.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.runnables.config import get_config_list, run_in_executor
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from PIL import Image

__all__ = ["LoadedVLM", "ModelLoadError", "TransformersChatModel", "check_model_folder",
           "load_image", "load_processor", "load_vlm", "register_vlm", "to_conversation"]

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
#: Per-call options ``invoke``/``batch`` accept besides ``stop``.
CALL_OPTIONS = ("max_new_tokens", "min_new_tokens", "temperature")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_ROLES = {"system": "system", "human": "user", "user": "user", "ai": "assistant",
          "assistant": "assistant"}


@dataclass(frozen=True)
class Prompt:
    """One chat-templated prompt and the images its placeholders stand for, in order."""

    text: str
    images: list[Any]


class ModelLoadError(RuntimeError):
    """A local VLM could not be loaded (missing or incomplete folder, unknown model id)."""


# ---------------------------------------------------------------------------------------------
# Loading, once per process


@dataclass
class LoadedVLM:
    """A model and its processor in memory; ``lock`` serialises ``generate`` on it."""

    model: Any
    processor: Any
    device: str
    dtype: str
    source: str
    load_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_loaded: dict[tuple[str, str, str], LoadedVLM] = {}
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}
_registry_lock = threading.Lock()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...): "
                         f"{exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this torch sees no CUDA GPU; use device='cpu' "
                         f"or 'auto'")
    return str(resolved)


def _resolve_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def _source(model_path: str) -> str:
    """The cache key's name for a model: a resolved folder, or a Hub id as given."""
    local = Path(model_path).expanduser()
    return str(local.resolve()) if local.exists() else model_path


def _looks_like_hub_id(model_path: str) -> bool:
    return (model_path.count("/") == 1 and not model_path.startswith((".", "/", "~"))
            and "\\" not in model_path and not model_path.endswith("/"))


def check_model_folder(model_path: str) -> None:
    """Raise ``ModelLoadError`` naming what is missing unless ``model_path`` is a Hub id or a
    folder holding a config, weights, a tokenizer and an image processor config."""
    folder = Path(model_path).expanduser()
    if not folder.exists():
        if _looks_like_hub_id(model_path):
            return  # resolved by from_pretrained (Hub or local HF cache)
        raise ModelLoadError(
            f"VLM folder {model_path!r} does not exist. Pass a folder holding a saved model "
            f"(config.json, weights, tokenizer, preprocessor_config.json), e.g. one made with "
            f"`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir DIR`, or a Hub model id.")
    if not folder.is_dir():
        raise ModelLoadError(f"VLM path {model_path!r} is a file, not a model folder; pass the "
                             f"folder that holds config.json and the weights.")
    missing = []
    for what, names in (("config.json", ("config.json",)), ("weights", _WEIGHT_FILES),
                        ("tokenizer", _TOKENIZER_FILES), ("image processor config", _IMAGE_PROCESSOR_FILES)):
        if not any((folder / name).is_file() for name in names):
            missing.append(f"{what} ({' or '.join(names)})")
    if missing:
        raise ModelLoadError(
            f"VLM folder {model_path!r} is incomplete: missing {'; '.join(missing)}. Download it "
            f"again (`hf download MODEL_ID --local-dir {model_path}`) or re-save it with "
            f"model.save_pretrained(...) and processor.save_pretrained(...).")


def _images_only_processor(source: str):
    """The model type's processor without its video processor (which needs torchvision)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(source)
    class_name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    base = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    if base is None:
        raise ModelLoadError(f"no multimodal processor is known for model type "
                             f"{config.model_type!r} of {source!r}")

    class ImagesOnlyProcessor(base):  # the signature decides which components ProcessorMixin wants
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=None, chat_template=chat_template, **kwargs)

    tokenizer = AutoTokenizer.from_pretrained(source)
    return ImagesOnlyProcessor(AutoImageProcessor.from_pretrained(source), tokenizer,
                               chat_template=tokenizer.chat_template)


def load_processor(source: str):
    """The folder's processor, left-padding; images-only where the full one cannot be built."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - e.g. a video processor that needs torchvision
        logger.debug("AutoProcessor failed for %s (%s); building an images-only processor", source, exc)
        processor = None
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        processor = _images_only_processor(source)
    if processor.chat_template is None:
        raise ModelLoadError(f"{source!r} has no chat template (chat_template.jinja or "
                             f"chat_template.json); save the processor with one.")
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    return processor


def _prepare(model: Any, processor: Any) -> None:
    """Settings the backend relies on: eval mode, left padding, a pad token for batches."""
    model.eval()
    processor.tokenizer.padding_side = "left"
    generation = model.generation_config
    if generation.pad_token_id is None:
        eos = generation.eos_token_id
        generation.pad_token_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id \
            is not None else (eos[0] if isinstance(eos, (list, tuple)) else eos)


def load_vlm(model_path: str, device: str = "auto", dtype: str = "auto") -> LoadedVLM:
    """The model and processor for ``model_path`` on ``device`` in ``dtype``, loaded on the
    first call and shared afterwards (one copy per process and key; concurrent first calls
    load once)."""
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    key = (_source(model_path), device, dtype)
    with _registry_lock:
        if key in _loaded:
            return _loaded[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _registry_lock:
            if key in _loaded:
                return _loaded[key]
        check_model_folder(model_path)
        import torch
        from transformers import AutoModelForImageTextToText

        start = time.perf_counter()
        try:
            processor = load_processor(key[0])
            model = AutoModelForImageTextToText.from_pretrained(
                key[0], dtype=getattr(torch, dtype), device_map=device)
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError, ImportError) as exc:
            hint = (" Without network access, download it on a connected machine "
                    "(`hf download MODEL_ID --local-dir DIR`) and pass DIR."
                    if not Path(model_path).expanduser().exists() else "")
            raise ModelLoadError(f"could not load VLM {model_path!r}: {type(exc).__name__}: "
                                 f"{exc}.{hint}") from exc
        _prepare(model, processor)
        loaded = LoadedVLM(model, processor, device, dtype, key[0], time.perf_counter() - start)
        logger.info("Loaded VLM %s on %s (%s) in %.1f s", key[0], device, dtype, loaded.load_s)
        with _registry_lock:
            _loaded[key] = loaded
        return loaded


def register_vlm(model_path: str, model: Any, processor: Any, device: str = "auto",
                 dtype: str = "auto") -> LoadedVLM:
    """Put a model built in memory under ``model_path`` in the cache, so that
    ``TransformersChatModel(model_path=model_path, device=..., dtype=...)`` uses it without
    loading anything (benchmarks on random weights; embedding applications)."""
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    _prepare(model, processor)
    loaded = LoadedVLM(model, processor, device, dtype, model_path)
    with _registry_lock:
        _loaded[(_source(model_path), device, dtype)] = loaded
    return loaded


# ---------------------------------------------------------------------------------------------
# LangChain messages -> chat-template conversation + images


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."


def load_image(url: str) -> Image.Image:
    """A data URL (base64 image), a ``file://`` URL or a local path, decoded to an RGB image."""
    from PIL import Image, UnidentifiedImageError

    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64") or not payload:
            raise ValueError(f"image data URL {_short(url)!r} is not a base64 image "
                             f"(expected data:image/png;base64,... or data:image/jpeg;base64,...)")
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image data URL {_short(url)!r} holds invalid base64: {exc}") from None
    elif url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        source = Path(urllib.request.url2pathname(parsed.path))
    elif "://" in url:
        raise ValueError(f"image URL {_short(url)!r} cannot be read in-process: send the image as a "
                         f"data URL (data:image/png;base64,...), a file:// URL or a local path")
    else:
        source = Path(url).expanduser()
    if isinstance(source, Path) and not source.is_file():
        raise ValueError(f"image file {str(source)!r} (from {_short(url)!r}) does not exist")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {_short(url)!r} could not be decoded: {exc}") from None


def _image_url(part: dict[str, Any]) -> str:
    """The URL of an OpenAI ``image_url`` part or a LangChain standard ``image`` block."""
    if part.get("type") == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
    elif part.get("base64"):
        url = f"data:{part.get('mime_type', 'image/png')};base64,{part['base64']}"
    else:
        url = part.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError(f"image part {str(part)[:80]!r} has no URL")
    return url


def to_conversation(messages: list[BaseMessage]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Chat-template messages (``{"role", "content"}``; content a string, or parts ``{"type":
    "image"}`` / ``{"type": "text", "text"}`` when images are present) and the images in order."""
    conversation: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else message.type
        if role not in _ROLES:
            raise ValueError(f"{type(message).__name__} (role {role!r}) is not supported by the "
                             f"transformers backend; use system, human and ai messages")
        content = message.content
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        converted: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, str):
                converted.append({"type": "text", "text": part})
            elif isinstance(part, dict) and part.get("type") == "text":
                converted.append({"type": "text", "text": str(part.get("text", ""))})
            elif isinstance(part, dict) and part.get("type") in ("image_url", "image"):
                images.append(load_image(_image_url(part)))
                converted.append({"type": "image"})
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"message part of type {kind!r} is not supported; use text and "
                                 f"image_url parts")
        if all(p["type"] == "text" for p in converted):
            conversation.append({"role": _ROLES[role], "content": "".join(p["text"] for p in converted)})
        else:
            conversation.append({"role": _ROLES[role], "content": converted})
    if not conversation:
        raise ValueError("no messages to send")
    return conversation, images


# ---------------------------------------------------------------------------------------------
# The chat model


class TransformersChatModel(BaseChatModel):
    """A Qwen-VL-style ``AutoModelForImageTextToText`` run in this process.

    ``model_path`` is a local folder or a Hub id; weights load on first use and are shared
    with every other instance of the same (path, device, dtype). ``seed`` makes sampling
    reproducible: an instance's n-th call samples with seed ``seed + n``, so two fresh
    instances with one seed give the same replies, while a retry on one instance re-samples.
    ``invoke``/``batch`` accept ``stop`` and per-call ``max_new_tokens``, ``min_new_tokens``
    and ``temperature``.
    """

    model_config = ConfigDict(protected_namespaces=())

    model_path: str = Field(description="Local model folder or Hub model id.")
    device: str = Field("auto", description="Torch device; auto = cuda if available, else cpu.")
    dtype: str = Field("auto", description="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, "
                                           "float16 or float32.")
    max_new_tokens: int = Field(4096, ge=1, description="Most new tokens per reply.")
    temperature: float = Field(0.7, ge=0.0, description="0 = greedy decoding.")
    seed: int | None = Field(None, description="Seed of sampling; None = torch's global RNG.")

    _calls: int = PrivateAttr(default=0)
    _calls_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"dtype={value!r} is not one of {', '.join(DTYPES)}")
        return value

    @property
    def _llm_type(self) -> str:
        return "transformers-vlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "device": self.device, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "seed": self.seed}

    @property
    def model_name(self) -> str:
        return self.model_path

    @property
    def loaded(self) -> LoadedVLM:
        """The shared model and processor (loads them on first access)."""
        return load_vlm(self.model_path, self.device, self.dtype)

    # -- LangChain entry points --------------------------------------------------------------

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        options = self._options(stop, kwargs)
        return self._run([self._prompt(messages)], options)[0]

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Answer every input with one batched ``generate`` call. Callbacks see one run per
        input; with ``return_exceptions`` an unusable input (bad image, say) becomes its
        exception while the others are answered."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        stop = kwargs.pop("stop", None)
        options = self._options(stop, kwargs)
        params = self._get_invocation_params(stop=stop, **kwargs)
        outputs: list[Any] = [None] * len(inputs)
        pending: list[tuple[int, Prompt, Any]] = []
        for index, (item, cfg) in enumerate(zip(inputs, configs)):
            run = None
            try:
                messages = self._convert_input(item).to_messages()
                manager = CallbackManager.configure(
                    cfg.get("callbacks"), self.callbacks, self.verbose, cfg.get("tags"), self.tags,
                    {**(cfg.get("metadata") or {}), **self._get_ls_params(stop=stop, **kwargs)},
                    self.metadata)
                run = manager.on_chat_model_start(
                    self._serialized, [messages], invocation_params=params, options={"stop": stop},
                    name=cfg.get("run_name"), run_id=cfg.pop("run_id", None),
                    batch_size=len(inputs))[0]
                pending.append((index, self._prompt(messages), run))
            except Exception as exc:
                if run is not None:
                    run.on_llm_error(exc)
                if not return_exceptions:
                    raise
                outputs[index] = exc
        if not pending:
            return outputs
        try:
            results = self._run([prompt for _, prompt, _ in pending], options)
        except Exception as exc:
            for _, _, run in pending:
                run.on_llm_error(exc)
            if not return_exceptions:
                raise
            for index, _, _ in pending:
                outputs[index] = exc
            return outputs
        for (index, _, run), result in zip(pending, results):
            run.on_llm_end(LLMResult(generations=[result.generations]))
            message = result.generations[0].message
            if message.id is None:
                message.id = f"{LC_ID_PREFIX}-{run.run_id}-0"
            outputs[index] = message
        return outputs

    async def abatch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[Any]:
        return await run_in_executor(None, self.batch, inputs, config,
                                     return_exceptions=return_exceptions, **kwargs)

    # -- the work ------------------------------------------------------------------------------

    def _options(self, stop: list[str] | None, call: dict[str, Any]) -> dict[str, Any]:
        """``generate`` settings from the instance's fields and the per-call options."""
        unknown = sorted(set(call) - set(CALL_OPTIONS))
        if unknown:
            raise ValueError(f"unsupported option(s) {', '.join(unknown)} for the transformers "
                             f"backend; supported: stop, {', '.join(CALL_OPTIONS)}")
        max_new_tokens = int(call.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(call["temperature"] if call.get("temperature") is not None
                            else self.temperature)
        if temperature < 0 or max_new_tokens < 1:
            raise ValueError(f"temperature={temperature} must be >= 0 and "
                             f"max_new_tokens={max_new_tokens} >= 1")
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if call.get("min_new_tokens"):
            options["min_new_tokens"] = int(call["min_new_tokens"])
        if temperature > 0:  # sampling keeps the checkpoint's top-p / top-k
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            options["stop_strings"] = list(stop)
        return options

    def _prompt(self, messages: list[BaseMessage]) -> Prompt:
        """The chat-templated prompt text and its images (CPU work, done outside the lock)."""
        conversation, images = to_conversation(messages)
        text = self.loaded.processor.apply_chat_template(conversation, tokenize=False,
                                                         add_generation_prompt=True)
        return Prompt(text, images)

    def _next_seed(self) -> int | None:
        if self.seed is None:
            return None
        with self._calls_lock:
            self._calls += 1
            return self.seed + self._calls - 1

    def _run(self, prompts: list[Prompt], options: dict[str, Any]) -> list[ChatResult]:
        """One left-padded ``generate`` call for all ``prompts``; one ChatResult each."""
        import torch

        loaded = self.loaded
        processor, model = loaded.processor, loaded.model
        images = [image for prompt in prompts for image in prompt.images]
        inputs = processor(text=[prompt.text for prompt in prompts], images=images or None,
                           padding=True, return_tensors="pt").to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        if "stop_strings" in options:
            options = {**options, "tokenizer": processor.tokenizer}

        seed = self._next_seed()
        cuda = [model.device.index or 0] if model.device.type == "cuda" else []
        with loaded.lock, torch.inference_mode(), \
                torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            start = time.perf_counter()
            sequences = model.generate(**inputs, **options)
            seconds = time.perf_counter() - start

        prompt_len = inputs["input_ids"].shape[1]
        eos = model.generation_config.eos_token_id
        end_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        stop = options.get("stop_strings") or ()
        results = []
        for row, input_tokens in zip(sequences[:, prompt_len:].tolist(),
                                     inputs["attention_mask"].sum(dim=1).tolist()):
            ended = next((i for i, token in enumerate(row) if token in end_ids), None)
            kept = row if ended is None else row[:ended + 1]  # counts the end token
            text = processor.tokenizer.decode(kept, skip_special_tokens=True)
            finish = "length" if ended is None and len(row) >= options["max_new_tokens"] else "stop"
            for marker in stop:  # cut at the earliest stop string, which is not part of the reply
                if marker in text:
                    text, finish = text.split(marker, 1)[0], "stop"
            usage = {"input_tokens": int(input_tokens), "output_tokens": len(kept),
                     "total_tokens": int(input_tokens) + len(kept)}
            message = AIMessage(content=text, usage_metadata=usage, response_metadata={
                "finish_reason": finish, "model_name": self.model_path,
                "model_provider": "transformers", "generate_s": seconds, "batch_size": len(prompts)})
            results.append(ChatResult(generations=[ChatGeneration(message=message)]))
        return results
