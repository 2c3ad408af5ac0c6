"""What ``training.sft`` and ``training.grpo`` share: data and model options, loading, resuming,
saving, and merging a LoRA adapter into a full model folder.

Why a module: both scripts parse ``--config RECIPE.yaml`` plus flags into TRL's own dataclasses
(defaults < YAML < flags, TRL's ``TrlParser``), load a Qwen-VL model with its vision tower
frozen and a processor that needs no torchvision (``tools.llm.local.load_processor``), and leave
a folder that ``tools.llm.local.TransformersChatModel(model_path=...)`` and ``vllm serve`` load.
Doing that once keeps the two scripts to their trainer.

Which settings are the reference's (zhengdian1/InterleaveThinker at commit
94c7593ad600748444e4b2d5efd888a72a93a6bd: LLaMA-Factory ``train/LLaMA-Factory/examples/train_full/
sft_*.yaml`` for SFT, EasyR1 ``train/EasyR1/examples/interleave_thinker_config.yaml`` and
``local_scripts/run_interleave_thinker_rl.sh`` for GRPO) is said value by value in the recipes,
``training/recipes/*.yaml``; the options here default to what the SFT stage does.

A LoRA run saves the adapter in ``output_dir`` and, with ``merge_lora`` (default), a merged full
model in ``output_dir/merged``. To merge a checkpoint by hand::

    python -c "from training.config import merge_adapter; merge_adapter('OUT/checkpoint-500', 'OUT/merged-500')"

torch, transformers, trl and datasets are imported inside the functions.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: ``--resume_from_checkpoint`` values that mean "the newest checkpoint in output_dir, if any".
RESUME_LAST = ("last", "true", "True", "yes", "1")
#: Files of a saved processor (tokenizer, chat template, image processor).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
)


@dataclass
class DataArguments:
    """Options of our scripts besides TRL's training and model configs."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Folder written by `interleave datagen export` (datasets.save_to_disk: planner_sft, "
            "critic_sft or critic_rl) or a Hub dataset id."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration name of a Hub dataset (ignored for a folder)."}
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "Split to train on when the dataset has splits."}
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on when eval_strategy is not 'no'."}
    )
    freeze_vision: bool = field(
        default=True,
        metadata={
            "help": "Freeze the vision tower and its projector (merger); only the language model trains. "
            "The reference freezes them for SFT (LLaMA-Factory freeze_vision_tower and "
            "freeze_multi_modal_projector) and trains them in GRPO (EasyR1 freeze_vision_tower: "
            "false); the recipes set it so."
        },
    )
    image_max_pixels: int = field(
        default=1024 * 1024,
        metadata={"help": "Images larger than this many pixels are downscaled by the processor (paper: 1024x1024)."},
    )
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "After a LoRA run, also save the merged full model in OUTPUT_DIR/merged (loads in "
            "TransformersChatModel and `vllm serve`)."
        },
    )


def trl_parser(subparsers: Any, name: str, dataclass_types: tuple, description: str) -> Any:
    """A training script's ``TrlParser``, TRL's way: mounted in ``subparsers`` (of ``TrlParser``s)
    as ``name``, as ``interleave train NAME`` mounts it, else on its own."""
    from trl import TrlParser

    if subparsers is not None:
        return subparsers.add_parser(name, dataclass_types=dataclass_types, description=description)
    return TrlParser(dataclass_types, prog=f"interleave train {name}", description=description)


def parse(parser: Any, argv: list[str] | None) -> tuple:
    """Parse ``argv`` (None: sys.argv) with ``--config YAML`` support; unknown flags are errors."""
    return tuple(parser.parse_args_and_config(args=argv))


def load_splits(args: DataArguments, eval_strategy: str) -> tuple[Any, Any]:
    """(train, eval or None) from a save_to_disk folder or a Hub id."""
    import datasets

    if not args.dataset_name:
        raise ValueError(
            "no dataset: pass --dataset_name with a folder written by `interleave "
            "datagen export` (e.g. runs/export/critic_rl) or a Hub dataset id"
        )
    folder = Path(args.dataset_name).expanduser()
    if folder.exists():
        loaded = datasets.load_from_disk(str(folder))
    else:
        loaded = datasets.load_dataset(args.dataset_name, name=args.dataset_config)
    if isinstance(loaded, datasets.Dataset):
        return loaded, None
    if args.dataset_train_split not in loaded:
        raise ValueError(
            f"dataset {args.dataset_name!r} has splits {sorted(loaded)}, not "
            f"{args.dataset_train_split!r}; set --dataset_train_split"
        )
    evaluate = eval_strategy != "no" and args.dataset_test_split in loaded
    return loaded[args.dataset_train_split], loaded[args.dataset_test_split] if evaluate else None


def check_columns(dataset: Any, required: tuple[str, ...], what: str) -> None:
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the {what} dataset lacks column(s) {missing} (has {dataset.column_names}); "
            f"build it with `interleave datagen export`"
        )


def freeze_vision_tower(model: Any) -> int:
    """Freeze the vision encoder with its projector; return how many parameters were frozen."""
    inner = getattr(model, "model", model)
    vision = getattr(inner, "visual", None) or getattr(model, "visual", None)
    if vision is None:
        raise ValueError(
            f"{type(model).__name__} has no `visual` module to freeze; pass --freeze_vision false for this model"
        )
    frozen = 0
    for parameter in vision.parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


def load_model_and_processor(model_args: Any, data_args: DataArguments, training_args: Any):
    """The VLM to train (vision frozen if asked) and its processor (no torchvision needed)."""
    import torch
    from transformers import AutoModelForImageTextToText
    from trl import get_quantization_config

    from tools.llm.local import load_processor

    if not model_args.model_name_or_path:
        raise ValueError(
            "no model: pass --model_name_or_path (a Hub id such as Qwen/Qwen3-VL-8B-Instruct or a local folder)"
        )
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    quantization = get_quantization_config(model_args)
    kwargs = dict(
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
    )
    if quantization is not None:  # QLoRA: each process holds its quantized copy on its own GPU
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **kwargs)
    if data_args.freeze_vision:
        logger.info("froze %d vision parameters", freeze_vision_tower(model))
    processor = load_processor(model_args.model_name_or_path)
    size = dict(processor.image_processor.size or {})
    size["longest_edge"] = data_args.image_max_pixels
    processor.image_processor.size = size
    return model, processor


def resume_point(training_args: Any) -> str | bool | None:
    """What ``trainer.train(resume_from_checkpoint=...)`` gets: "last"/"true" means the newest
    checkpoint in output_dir, or a fresh start when there is none yet (so one command both
    starts and continues a run); a path is used as given."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or value in ("", "false", "False", "no", "0"):
        return None
    if value in RESUME_LAST:
        folder = Path(training_args.output_dir)
        last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        if last is None:
            logger.info("no checkpoint in %s yet: starting from the beginning", folder)
        else:
            logger.info("resuming from %s", last)
        return last
    if not Path(value).is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {value!r} is not a checkpoint folder; pass one "
            f"(OUTPUT_DIR/checkpoint-N) or 'last'"
        )
    return value


def finish(trainer: Any, model_args: Any, data_args: DataArguments) -> Path:
    """Save the final model (or adapter), processor and trainer state (the logged metrics, in
    trainer_state.json); merge a LoRA adapter if asked. Returns the folder a chat model loads."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))
    trainer.save_state()
    if not model_args.use_peft or not data_args.merge_lora:
        return out
    if trainer.accelerator.is_main_process:
        merge_adapter(str(out), str(out / "merged"), dtype=model_args.dtype or "auto")
    return out / "merged"


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "auto") -> Path:
    """Merge the LoRA adapter in ``adapter_dir`` into its base model and save a full folder
    (weights, config, generation config, tokenizer, image processor, chat template) to
    ``out_dir``, loadable by ``TransformersChatModel(model_path=out_dir)`` and ``vllm serve``."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    from tools.llm.local import load_processor

    config = PeftConfig.from_pretrained(adapter_dir)
    base_path = config.base_model_name_or_path
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    # The processor the run saved next to the adapter (tokenizer, chat template, image settings):
    # its files are copied, since building it needs the model's config.json, which is not there.
    kept = [f for f in Path(adapter_dir).iterdir() if f.is_file() and f.name in PROCESSOR_FILES]
    for file in kept:
        shutil.copy2(file, Path(out_dir) / file.name)
    if not any(f.name.endswith("processor_config.json") for f in kept):
        load_processor(base_path).save_pretrained(out_dir)
    logger.info("merged %s into %s -> %s", adapter_dir, base_path, out_dir)
    return Path(out_dir)
