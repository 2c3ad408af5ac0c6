"""Loading a local VLM and its processor once per process, and checking its folder first.

Why this module exists: loading an 8B vision-language model takes tens of seconds and gigabytes
of memory, so it must happen once per process for each (path, device, dtype), however many
``TransformersChatModel`` instances (planner, critic) and threads ask for it; and a missing or
incomplete model folder should fail at once with a ``ModelLoadError`` that names what is missing
and how to get it, not deep inside ``from_pretrained``. ``tools.llm.local`` runs the loaded
model; ``register_vlm`` lets a model built in memory stand in for a folder.

A folder whose config has no ``vision_config`` is a text-only chat model (e.g. SmolLM2): it loads
as ``AutoModelForCausalLM`` with its tokenizer behind ``TextOnlyProcessor``, which serves a
narrative-mode planner and refuses any message with an image, naming why.

Qwen-VL processors want a video processor whose class needs torchvision; where torchvision
is missing (CPU installs) an images-only processor is assembled from the folder's tokenizer
and image processor instead.

torch and transformers are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.devices import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class ModelLoadError(RuntimeError):
    """A local VLM could not be loaded (missing or incomplete folder, unknown model id)."""


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


def _source(model_path: str) -> str:
    """The cache key's name for a model: a resolved folder, or a Hub id as given."""
    local = Path(model_path).expanduser()
    return str(local.resolve()) if local.exists() else model_path


def _looks_like_hub_id(model_path: str) -> bool:
    return (
        model_path.count("/") == 1
        and not model_path.startswith((".", "/", "~"))
        and "\\" not in model_path
        and not model_path.endswith("/")
    )


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
            f"`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir DIR`, or a Hub model id."
        )
    if not folder.is_dir():
        raise ModelLoadError(
            f"VLM path {model_path!r} is a file, not a model folder; pass the "
            f"folder that holds config.json and the weights."
        )
    missing = []
    needs = [("config.json", ("config.json",)), ("weights", _WEIGHT_FILES), ("tokenizer", _TOKENIZER_FILES)]
    if not is_text_only(model_path):
        needs.append(("image processor config", _IMAGE_PROCESSOR_FILES))
    for what, names in needs:
        if not any((folder / name).is_file() for name in names):
            missing.append(f"{what} ({' or '.join(names)})")
    if missing:
        raise ModelLoadError(
            f"VLM folder {model_path!r} is incomplete: missing {'; '.join(missing)}. Download it "
            f"again (`hf download MODEL_ID --local-dir {model_path}`) or re-save it with "
            f"model.save_pretrained(...) and processor.save_pretrained(...)."
        )


def is_text_only(model_path: str) -> bool:
    """Whether a local folder holds a chat model without a vision tower (no ``vision_config``)."""
    config = Path(model_path).expanduser() / "config.json"
    if not config.is_file():
        return False
    return "vision_config" not in json.loads(config.read_text(encoding="utf-8"))


class TextOnlyProcessor:
    """A text-only model's tokenizer with the processor interface the backend calls; a message
    with an image is refused (the model has no way to see it)."""

    def __init__(self, tokenizer: Any, source: str):
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template
        self.source = source

    def _refuse(self) -> None:
        raise ValueError(
            f"{self.source!r} is a text-only model (no vision_config): it cannot see "
            f"images. Use it as a narrative-mode planner only; the critic, the judge "
            f"and a guidance-mode planner need a vision-language model."
        )

    def apply_chat_template(self, conversation: list[dict[str, Any]], **options: Any) -> Any:
        if any(not isinstance(m["content"], str) for m in conversation):
            self._refuse()
        return self.tokenizer.apply_chat_template(conversation, **options)

    def __call__(self, text: Any, images: Any = None, **options: Any) -> Any:
        if images:
            self._refuse()
        return self.tokenizer(text, **options)


def _images_only_processor(source: str):
    """The model type's processor without its video processor (which needs torchvision)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(source)
    class_name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    base = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    if base is None:
        raise ModelLoadError(f"no multimodal processor is known for model type {config.model_type!r} of {source!r}")

    class ImagesOnlyProcessor(base):  # the signature decides which components ProcessorMixin wants
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(
                image_processor=image_processor,
                tokenizer=tokenizer,
                video_processor=None,
                chat_template=chat_template,
                **kwargs,
            )

    tokenizer = AutoTokenizer.from_pretrained(source)
    return ImagesOnlyProcessor(
        AutoImageProcessor.from_pretrained(source), tokenizer, chat_template=tokenizer.chat_template
    )


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
        raise ModelLoadError(
            f"{source!r} has no chat template (chat_template.jinja or chat_template.json); save the processor with one."
        )
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    return processor


def _prepare(model: Any, processor: Any) -> None:
    """Settings the backend relies on: eval mode, left padding, a pad token for batches."""
    model.eval()
    processor.tokenizer.padding_side = "left"
    generation = model.generation_config
    if generation.pad_token_id is None:
        eos = generation.eos_token_id
        generation.pad_token_id = (
            processor.tokenizer.pad_token_id
            if processor.tokenizer.pad_token_id is not None
            else (eos[0] if isinstance(eos, (list, tuple)) else eos)
        )


def load_vlm(model_path: str, device: str = "auto", dtype: str = "auto") -> LoadedVLM:
    """The model and processor for ``model_path`` on ``device`` in ``dtype``, loaded on the
    first call and shared afterwards (one copy per process and key; concurrent first calls
    load once)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
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
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        start = time.perf_counter()
        try:
            if is_text_only(key[0]):
                processor = TextOnlyProcessor(AutoTokenizer.from_pretrained(key[0]), key[0])
                if processor.chat_template is None:
                    raise ModelLoadError(f"{key[0]!r} has no chat template; save the tokenizer with one.")
                model = AutoModelForCausalLM.from_pretrained(key[0], dtype=getattr(torch, dtype), device_map=device)
            else:
                processor = load_processor(key[0])
                model = AutoModelForImageTextToText.from_pretrained(
                    key[0], dtype=getattr(torch, dtype), device_map=device
                )
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError, ImportError) as exc:
            hint = (
                " Without network access, download it on a connected machine "
                "(`hf download MODEL_ID --local-dir DIR`) and pass DIR."
                if not Path(model_path).expanduser().exists()
                else ""
            )
            raise ModelLoadError(f"could not load VLM {model_path!r}: {type(exc).__name__}: {exc}.{hint}") from exc
        _prepare(model, processor)
        loaded = LoadedVLM(model, processor, device, dtype, key[0], time.perf_counter() - start)
        logger.info("Loaded VLM %s on %s (%s) in %.1f s", key[0], device, dtype, loaded.load_s)
        with _registry_lock:
            _loaded[key] = loaded
        return loaded


def register_vlm(model_path: str, model: Any, processor: Any, device: str = "auto", dtype: str = "auto") -> LoadedVLM:
    """Put a model built in memory under ``model_path`` in the cache, so that
    ``TransformersChatModel(model_path=model_path, device=..., dtype=...)`` uses it without
    loading anything (benchmarks on random weights; embedding applications)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    _prepare(model, processor)
    loaded = LoadedVLM(model, processor, device, dtype, model_path)
    with _registry_lock:
        _loaded[(_source(model_path), device, dtype)] = loaded
    return loaded
