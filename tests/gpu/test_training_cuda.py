"""A few critic GRPO steps on CUDA in bf16 through ``training.grpo.main``, with the tiny Qwen3-VL
(taught a handful of verdicts first, so rollouts parse and the step-wise reward really
regenerates), the tiny klein generator on the GPU and a scripted judge on 127.0.0.1.

Prints where a step's time goes: rollout generation, reward regeneration, judging (from the
reward's own ``stepwise/*`` metrics), the rest of scoring, and the update (TRL's ``step_time``
minus generation and scoring). Run on the GPU machine: ``pytest -m gpu tests/gpu`` (it needs no
fixture from conftest, so ``--noconftest`` works where langgraph is not installed).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "critic_grpo.yaml"
SIZE = 128
ROWS = 4
CRITIC_TEXT = (
    "Original instruction: a cat sits on a blue chair\nRewritten prompt: a cat\n"
    "The first image is BEFORE, the second is AFTER."
)
REPLIES = [
    '<answer>{"previous_step_success": false, "refine_prompt": "a red cat on a chair"}</answer>',
    '<answer>{"previous_step_success": false, "refine_prompt": "a blue cat"}</answer>',
    '<answer>{"previous_step_success": false, "refine_prompt": "a cat on a green chair"}</answer>',
    '<answer>{"previous_step_success": true, "refine_prompt": "a cat"}</answer>',
]


def picture(seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def prompt() -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "You judge one step."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": CRITIC_TEXT}]},
    ]


def rows() -> list[dict]:
    return [
        {
            "prompt": prompt(),
            "images": [picture(10 + i), picture(20 + i)],
            "origin_prompt": "a cat sits on a blue chair",
            "rewritten_prompt": "a cat",
            "from_scratch": False,
            "success": False,
            "semantics": 4.0,
            "quality": 5.0,
            "seed": 100 + i,
            "width": SIZE,
            "height": SIZE,
            "run_id": f"r{i}",
            "step_number": 2,
            "attempt": 1,
        }
        for i in range(ROWS)
    ]


def taught_critic(folder) -> str:
    """The tiny Qwen3-VL after plain optimizer steps on ``REPLIES`` for every row's images, so
    that its sampled replies are mostly well formed (a random tiny model's never are)."""
    from transformers import AutoModelForImageTextToText

    from tools.llm.local import load_processor
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    base = str(save_tiny_qwen3vl(folder / "tiny-qwen3vl"))
    processor = load_processor(base)
    processor.tokenizer.padding_side = "right"
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).cuda()
    text = processor.apply_chat_template(prompt(), tokenize=False, add_generation_prompt=True)
    images = [image for row in rows() for image in row["images"]]
    batch = processor(
        text=[text + r + "<|im_end|>" for _ in range(ROWS) for r in REPLIES],
        images=[image for i in range(ROWS) for _ in REPLIES for image in images[2 * i : 2 * i + 2]],
        padding=True,
        return_tensors="pt",
    ).to("cuda")
    prompt_len = len(processor(text=[text], images=images[:2], return_tensors="pt")["input_ids"][0])
    labels = batch["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[batch["attention_mask"] == 0] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(80):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"taught critic: final loss {loss.item():.3f}")
    out = folder / "taught-critic"
    model.save_pretrained(out)
    load_processor(base).save_pretrained(out)
    return str(out)


def rl_dataset(folder) -> str:
    import datasets

    datasets.Dataset.from_list(rows()).save_to_disk(str(folder / "critic_rl"))
    return str(folder / "critic_rl")


def judge_reply(body: dict) -> str:
    from tools.doubles.scripted_chat import count_images

    if count_images(body) == 2:
        return '<answer>{"scores": [8, 9], "reasoning": "done"}</answer>'
    return '<answer>{"scores": [6, 7], "reasoning": "clean"}</answer>'


@pytest.fixture
def tiny_klein(tmp_path) -> str:
    from tools.doubles.tiny_klein import save_tiny_klein

    return str(save_tiny_klein(tmp_path / "tiny-klein"))


def timed(monkeypatch, cls, name: str, record: dict) -> None:
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.cuda.synchronize()
            record.setdefault(name, []).append(time.perf_counter() - start)
            record["trainer"] = self

    monkeypatch.setattr(cls, name, wrapper)


def test_grpo_steps_in_bf16_on_cuda_with_a_time_breakdown(tmp_path, tiny_klein, monkeypatch):
    from trl import GRPOTrainer

    from tools.doubles.scripted_chat import ScriptedChatServer
    from training import grpo

    record: dict = {}
    for name in ("_generate", "_calculate_rewards", "_generate_and_score_completions"):
        timed(monkeypatch, GRPOTrainer, name, record)
    critic, data = taught_critic(tmp_path), rl_dataset(tmp_path)
    steps = 5
    with ScriptedChatServer(judge_reply) as judge:
        assert (
            grpo.main(
                [
                    "--config",
                    str(RECIPE),
                    "--model_name_or_path",
                    critic,
                    "--dataset_name",
                    data,
                    "--output_dir",
                    str(tmp_path / "grpo"),
                    "--max_steps",
                    str(steps),
                    "--num_generations",
                    "8",
                    "--per_device_train_batch_size",
                    "8",
                    "--gradient_accumulation_steps",
                    "1",
                    "--max_completion_length",
                    "48",
                    "--bf16",
                    "true",
                    "--dtype",
                    "bfloat16",
                    "--report_to",
                    "none",
                    "--save_strategy",
                    "no",
                    "--log_completions",
                    "false",
                    "--logging_steps",
                    "1",
                    "--generator_model",
                    tiny_klein,
                    "--generator_device",
                    "cuda",
                    "--generator_dtype",
                    "bfloat16",
                    "--judge_base_url",
                    judge.base_url,
                    "--judge_model",
                    "scripted-judge",
                ]
            )
            == 0
        )

    trainer = record["trainer"]
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert next(trainer.model.parameters()).device.type == "cuda"
    logs = [e for e in trainer.state.log_history if "step_time" in e]
    assert len(logs) == steps
    assert sum(e["stepwise/regenerations"] for e in logs) >= 1
    assert sum(e["stepwise/generator_failed"] + e["stepwise/judge_failed"] for e in logs) == 0

    rows = []
    for i, entry in enumerate(logs):
        scoring = record["_generate_and_score_completions"][i]
        generation = record["_generate"][i]
        rewards = record["_calculate_rewards"][i]
        rows.append(
            {
                "step": entry["step"],
                "step_s": entry["step_time"],
                "generation_s": generation,
                "rewards_s": rewards,
                "regenerate_s": entry["stepwise/regenerate_s"],
                "judge_s": entry["stepwise/judge_s"],
                "judge_wait_s": entry["stepwise/judge_wait_s"],
                "other_scoring_s": scoring - generation - rewards,
                "update_s": entry["step_time"] - scoring,
                "regenerations": entry["stepwise/regenerations"],
            }
        )
    warm = rows[1:]  # the first step pays CUDA start-up
    summary = {key: statistics.median(r[key] for r in warm) for key in rows[0] if key != "step"}
    summary["rewards_share_of_step"] = summary["rewards_s"] / summary["step_s"]
    print("\nGRPO step breakdown (tiny Qwen3-VL + tiny klein, bf16, H200), per step:")
    print(json.dumps(rows, indent=1))
    print("median of warm steps:", json.dumps({k: round(v, 4) for k, v in summary.items()}))
