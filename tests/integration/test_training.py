"""Training through the real entry points (``training.sft.main`` / ``training.grpo.main`` with the
shipped recipes plus flags) on a tiny random Qwen3-VL, the tiny klein generator and a scripted
judge on 127.0.0.1: two SFT steps per dataset, LoRA with resume and merge, two GRPO steps whose
step-wise reward regenerates and judges, and the saved models loaded back by the graph's
in-process backend."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import sc_pq_judge
from tools.doubles.scripted_chat import ScriptedChatServer, count_images, message_text

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
CPU = [
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--dtype",
    "float32",
    "--report_to",
    "none",
    "--gradient_checkpointing",
    "false",
    "--logging_steps",
    "1",
    "--dataloader_num_workers",
    "0",
]
CRITIC_TEXT = (
    "Original instruction: a cat sits on a blue chair\nRewritten prompt: a cat\n"
    "The first image is BEFORE, the second is AFTER."
)
# What the taught critic says (see ``taught_critic``): two refinements and one acceptance.
REPLIES = [
    '<answer>{"previous_step_success": false, "refine_prompt": "a red cat on a chair"}</answer>',
    '<answer>{"previous_step_success": false, "refine_prompt": "a blue cat"}</answer>',
    '<answer>{"previous_step_success": true, "refine_prompt": "a cat"}</answer>',
]


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def picture(seed: int, size: int = 64) -> Image.Image:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def critic_prompt() -> list[dict]:
    return [
        {"role": "system", "content": [text("You judge one step of an image sequence.")]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, text(CRITIC_TEXT)]},
    ]


def save(rows: list[dict], folder: Path) -> str:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("export")
    planner = []
    for i in range(4):
        given = i % 2  # a guidance request with one input image, or a narrative one
        user = [text(f"Plan a short visual story about a paper boat, take {i}.")]
        if given:
            user = [text("Continue this sequence:"), {"type": "image"}, text("What comes next?")]
        plan = {
            "execution_plan": [
                {
                    "step_number": 1 + given,
                    "step_name": "Boat",
                    "instruction": "A paper boat",
                    "prompt": "a paper boat on a pond",
                    "auxiliary_text": None,
                }
            ]
        }
        planner.append(
            {
                "prompt": [
                    {"role": "system", "content": [text("You plan image sequences.")]},
                    {"role": "user", "content": user},
                ],
                "completion": [
                    {
                        "role": "assistant",
                        "content": [text(f"<think>one step</think><answer>{json.dumps(plan)}</answer>")],
                    }
                ],
                "images": [picture(i)] if given else [],
                "run_id": f"r{i}",
                "kind": "truncated" if given else "full",
            }
        )
    critic, rl = [], []
    for i in range(4):
        before, after = picture(10 + i), picture(20 + i)
        verdict = i % 2 == 0
        answer = {"previous_step_success": verdict, "refine_prompt": "a cat" if verdict else "a red cat"}
        critic.append(
            {
                "prompt": critic_prompt(),
                "images": [before, after],
                "completion": [
                    {
                        "role": "assistant",
                        "content": [text(f"<think>look</think><answer>{json.dumps(answer)}</answer>")],
                    }
                ],
                "run_id": f"r{i}",
                "step_number": 2,
                "attempt": 1,
                "verdict": verdict,
            }
        )
        rl.append(
            {
                "prompt": critic_prompt(),
                "images": [before, after],
                "origin_prompt": "a cat sits on a blue chair",
                "rewritten_prompt": "a cat",
                "from_scratch": i == 3,
                "success": False,
                "semantics": 4.0,
                "quality": 5.0,
                "seed": 100 + i,
                "width": 64,
                "height": 64,
                "run_id": f"r{i}",
                "step_number": 1 if i == 3 else 2,
                "attempt": 1,
            }
        )
    return {
        "planner": save(planner, folder / "planner_sft"),
        "critic": save(critic, folder / "critic_sft"),
        "rl": save(rl, folder / "critic_rl"),
    }


@pytest.fixture(scope="module")
def taught_critic(tiny_vlm, tmp_path_factory) -> str:
    """The tiny model after a few dozen plain optimizer steps on ``REPLIES``, so that sampling
    gives well-formed, varied verdicts and the step-wise reward really regenerates and judges."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tools.llm.local import load_processor

    processor = load_processor(tiny_vlm)
    processor.tokenizer.padding_side = "right"
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm, dtype=torch.float32)
    conversation = [{"role": m["role"], "content": m["content"]} for m in critic_prompt()]
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    pairs = [[picture(10 + i), picture(20 + i)] for i in range(4)]  # the critic_rl rows' images
    batch = processor(
        text=[prompt + r + "<|im_end|>" for _ in pairs for r in REPLIES],
        images=[image for pair in pairs for _ in REPLIES for image in pair],
        padding=True,
        return_tensors="pt",
    )
    prompt_len = len(processor(text=[prompt], images=pairs[0], return_tensors="pt")["input_ids"][0])
    labels = batch["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[batch["attention_mask"] == 0] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(40):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("models") / "taught-critic"
    model.save_pretrained(folder)
    load_processor(tiny_vlm).save_pretrained(folder)
    return str(folder)


# SC 8 for every regenerated image, PQ 6.
scripted_judge = sc_pq_judge(
    sc='Done. <answer>{"scores": [8, 9], "reasoning": "the cat is there"}</answer>',
    pq="<answer>{'scores': [6, 7], 'reasoning': 'clean'}</answer>",
)


def reply_of(model_path: str, images: int = 2) -> str:
    """A reply of the graph's in-process backend loading ``model_path``: greedy, exactly 8 new
    tokens (so a trained folder is shown to load whole, its chat template, processor and weights,
    and to decode; a random tiny model's words mean nothing)."""
    import base64
    import io

    from langchain_core.messages import HumanMessage, SystemMessage

    from tools.llm.local import TransformersChatModel

    def url(seed: int) -> str:
        buffer = io.BytesIO()
        picture(seed).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    parts = [{"type": "image_url", "image_url": {"url": url(s)}} for s in range(images)]
    chat = TransformersChatModel(
        model_path=model_path, device="cpu", dtype="float32", temperature=0.0, max_new_tokens=40
    )
    message = chat.invoke(
        [SystemMessage("You judge one step of an image sequence."), HumanMessage(parts + [text(CRITIC_TEXT)])],
        min_new_tokens=8,
        max_new_tokens=8,
    )
    assert message.usage_metadata["output_tokens"] == 8, message.usage_metadata
    assert message.usage_metadata["input_tokens"] > 0
    return message.content


def parameters(folder: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_recipe_values_sit_between_defaults_and_flags():
    from training import grpo, sft
    from training.config import parse

    _, training, model = parse(
        sft.make_parser(), ["--config", str(RECIPES / "planner_sft.yaml"), "--learning_rate", "3e-5", *CPU]
    )
    assert training.learning_rate == 3e-5  # flag over YAML
    assert training.num_train_epochs == 3 and training.warmup_steps == 0.1  # YAML over defaults
    assert training.lr_scheduler_type == "cosine" and model.model_name_or_path == "Qwen/Qwen3-VL-8B-Instruct"
    # the reference's LLaMA-Factory sft_planner.yaml
    assert (training.weight_decay, training.per_device_train_batch_size, training.gradient_accumulation_steps) == (
        1e-6,
        2,
        1,
    )
    assert training.adam_epsilon == 1e-8  # untouched default
    data, rewards, training, _ = parse(grpo.make_parser(), ["--config", str(RECIPES / "critic_grpo.yaml"), *CPU])
    # the reference's EasyR1 config and run script
    assert (training.num_generations, training.temperature, training.learning_rate) == (8, 1.0, 2e-6)
    assert (training.beta, training.epsilon, training.epsilon_high, training.delta) == (0.0, 0.2, 0.3, 3.0)
    assert (training.weight_decay, training.loss_type, training.lr_scheduler_type) == (0.01, "dapo", "constant")
    assert training.steps_per_generation // training.gradient_accumulation_steps == 2  # updates per rollout batch
    assert training.delta > 1 + training.epsilon_high  # where TRL's two-sided clip equals EasyR1's dual clip
    assert training.reward_weights == [0.5, 0.1, 0.3, 0.1] and training.max_completion_length == 4096
    assert not data.freeze_vision and rewards.generator_steps == 4
    assert (rewards.regen_seed, rewards.skip_unchanged_prompt, rewards.malformed_reply) == ("0", False, "regenerate")
    shown = grpo.make_parser().format_help()  # what `interleave train grpo --help` prints
    assert all(
        flag in shown
        for flag in (
            "--regen_seed",
            "--skip_unchanged_prompt",
            "--malformed_reply",
            "--delta",
            "--steps_per_generation",
            "--freeze_vision",
        )
    )


def test_train_commands_are_the_scripts_own_parsers_mounted(capsys):
    """`interleave train sft|grpo` parse with the scripts' TRL parsers (mounted lazily): the help
    lists TRL's options, a recipe is read as the script reads it, and global options may come first."""
    from graph.cli.main import make_parser

    with pytest.raises(SystemExit) as stop:
        make_parser().parse_args(["train", "grpo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0 and shown.startswith("usage: interleave train grpo")
    assert "--regen_seed" in shown and "--steps_per_generation" in shown
    args = make_parser().parse_args(
        ["-v", "train", "sft", "--config", str(RECIPES / "planner_sft.yaml"), "--learning_rate", "3e-5", *CPU]
    )
    _, training, _ = args.script_args
    assert args.verbose and training.learning_rate == 3e-5 and training.num_train_epochs == 3


def test_planner_sft_two_steps_with_the_vision_tower_frozen(tiny_vlm, data, tmp_path):
    from training import sft

    out = tmp_path / "planner"
    assert (
        sft.main(
            [
                "--config",
                str(RECIPES / "planner_sft.yaml"),
                *CPU,
                "--model_name_or_path",
                tiny_vlm,
                "--dataset_name",
                data["planner"],
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "1",
                "--max_length",
                "512",
                "--save_strategy",
                "no",
            ]
        )
        == 0
    )

    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in logs if "loss" in entry] == [1, 2]
    before, after = parameters(tiny_vlm), parameters(str(out))
    vision = [k for k in before if ".visual." in k]
    language = [k for k in before if ".language_model.layers." in k]
    assert vision and all((before[k] == after[k]).all() for k in vision)
    assert any((before[k] != after[k]).any() for k in language)
    reply_of(str(out), images=0)  # the trained planner folder decodes 8 tokens in the graph's backend


def test_critic_sft_with_lora_resumes_and_merges(tiny_vlm, data, tmp_path, monkeypatch, caplog):
    import transformers

    from training import sft

    steps = []
    original = transformers.Trainer.training_step

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", counted)
    out = tmp_path / "critic"
    argv = [
        "--config",
        str(RECIPES / "critic_sft_lora.yaml"),
        *CPU,
        "--model_name_or_path",
        tiny_vlm,
        "--dataset_name",
        data["critic"],
        "--output_dir",
        str(out),
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--max_length",
        "512",
        "--save_steps",
        "1",
        "--resume_from_checkpoint",
        "last",
    ]

    assert sft.main([*argv, "--max_steps", "1", "--no_merge_lora"]) == 0
    assert (out / "checkpoint-1").is_dir() and steps == [0]
    with caplog.at_level("INFO", logger="training.config"):
        assert sft.main([*argv, "--max_steps", "2"]) == 0

    assert steps == [0, 1]  # the second run did only step 2
    assert re.search(r"resuming from .*checkpoint-1", caplog.text)
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "model.safetensors").is_file()
    merged = parameters(str(out / "merged"))
    assert not any("lora" in k for k in merged)
    assert any((merged[k] != v).any() for k, v in parameters(tiny_vlm).items())
    reply_of(str(out / "merged"))  # the merged LoRA folder decodes 8 tokens, two images in


def test_critic_grpo_two_steps_regenerate_and_judge(taught_critic, data, tiny_pipeline, tmp_path):
    from training import grpo

    out = tmp_path / "grpo"
    with ScriptedChatServer(scripted_judge) as judge:
        assert (
            grpo.main(
                [
                    "--config",
                    str(RECIPES / "critic_grpo.yaml"),
                    *CPU,
                    "--model_name_or_path",
                    taught_critic,
                    "--dataset_name",
                    data["rl"],
                    "--output_dir",
                    str(out),
                    "--max_steps",
                    "2",
                    "--num_generations",
                    "4",
                    "--per_device_train_batch_size",
                    "4",
                    "--gradient_accumulation_steps",
                    "1",
                    "--steps_per_generation",
                    "1",
                    "--max_completion_length",
                    "40",
                    "--save_strategy",
                    "no",
                    "--log_completions",
                    "false",
                    "--generator_model",
                    str(tiny_pipeline),
                    "--generator_device",
                    "cpu",
                    "--generator_steps",
                    "2",
                    "--judge_base_url",
                    judge.base_url,
                    "--judge_model",
                    "scripted-judge",
                ]
            )
            == 0
        )
        requests = list(judge.requests)

    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    assert len(logs) == 2
    for name in ("format_reward", "accuracy_reward", "semantics_reward", "quality_reward"):
        assert all(0.0 <= entry[f"rewards/{name}/mean"] <= 1.0 for entry in logs)
    regenerated = sum(entry["stepwise/regenerations"] for entry in logs)
    assert regenerated >= 1 and sum(entry["stepwise/generator_failed"] for entry in logs) == 0
    assert sum(entry["stepwise/judge_failed"] for entry in logs) == 0
    sc = [r for r in requests if count_images(r) == 2]
    pq = [r for r in requests if count_images(r) == 1]
    assert sc and len(sc) == len(pq)
    assert all("a cat sits on a blue chair" in message_text(r["messages"][-1]) for r in sc)
    images = list((out / "rewards" / "images").rglob("*.png"))
    assert len(images) >= 2 and Image.open(images[0]).size == (64, 64)
    reply_of(str(out))  # the GRPO-trained critic decodes 8 tokens, two images in
