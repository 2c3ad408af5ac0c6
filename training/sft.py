"""Supervised fine-tuning of the planner or the critic with TRL (SPEC §5).

Both datasets written by ``interleave datagen export`` (``planner_sft``, ``critic_sft``) are in
TRL's conversational prompt/completion shape with an ``images`` column, so one script trains
either; the recipe says which (``training/recipes/planner_sft.yaml``, ``critic_sft.yaml`` and
their ``*_lora.yaml`` single-GPU variants). Loss is on the completion only (TRL's default for
prompt/completion data; LLaMA-Factory's too). The vision tower and projector stay frozen.

The full-fine-tune recipes follow the reference's LLaMA-Factory files
(zhengdian1/InterleaveThinker at commit 94c7593ad600748444e4b2d5efd888a72a93a6bd,
``train/LLaMA-Factory/examples/train_full/sft_planner.yaml`` and ``sft_critic.yaml``): batch per
device, accumulation, lr, schedule, weight decay, epochs, lengths; each value is marked there.

    interleave train sft --config training/recipes/critic_sft.yaml --dataset_name runs/export/critic_sft
    python -m training.sft --config training/recipes/planner_sft_lora.yaml --max_steps 10

Options: ours (``training.config.DataArguments``), TRL's ``SFTConfig`` and ``ModelConfig``;
``--help`` lists them all. Defaults < YAML recipe < flags. ``--resume_from_checkpoint last``
continues from the newest checkpoint in ``--output_dir`` (or starts when there is none).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from training.config import (
    DataArguments,
    check_columns,
    finish,
    load_model_and_processor,
    load_splits,
    parse,
    resume_point,
    trl_parser,
)

logger = logging.getLogger(__name__)


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> Any:
    """The script's options (``training.config.trl_parser``: mounted in ``subparsers`` as ``sft``)."""
    from trl import ModelConfig, SFTConfig

    types = (DataArguments, SFTConfig, ModelConfig)
    return trl_parser(subparsers, "sft", types, "Supervised fine-tuning of the planner or critic VLM (TRL SFTTrainer).")


def main(argv: list[str] | None = None) -> int:
    """Train as the recipe and flags in ``argv`` say (None: the process's own arguments)."""
    return run(parse(make_parser(), argv))


def run(options: tuple) -> int:
    """Train with the parsed options: (``DataArguments``, ``SFTConfig``, ``ModelConfig``)."""
    from trl import SFTTrainer, get_peft_config

    data_args, training_args, model_args = options
    train, evaluation = load_splits(data_args, training_args.eval_strategy)
    check_columns(train, ("prompt", "completion"), "SFT")
    model, processor = load_model_and_processor(model_args, data_args, training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resume_point(training_args))
    folder = finish(trainer, model_args, data_args)
    logger.info("SFT finished; the model to load is in %s", folder)
    return 0


if __name__ == "__main__":
    from tools.logs import configure_logging

    configure_logging(logging.INFO, "%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
