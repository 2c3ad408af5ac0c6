"""The tiny offline FLUX.2 [klein] pipeline behaves like the real one at the boundary the product uses.

The product loads it with ``DiffusionPipeline.from_pretrained(path)`` and calls it for
text-to-image and for edits; these tests do exactly that, offline, on CPU.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, Flux2KleinPipeline
from PIL import Image

from tools.doubles.tiny_klein import build_tiny_klein_pipeline, save_tiny_klein

PROMPT = "a red bicycle leaning against a brick wall"


def _folder_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def saved_path(tmp_path_factory) -> pathlib.Path:
    return save_tiny_klein(tmp_path_factory.mktemp("models") / "tiny-klein")


@pytest.fixture(scope="module")
def pipe(saved_path) -> Flux2KleinPipeline:
    pipeline = DiffusionPipeline.from_pretrained(saved_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline, size: int, seed: int = 0, image=None, prompt: str = PROMPT) -> np.ndarray:
    # `prompt` must be a keyword: the first positional parameter of Flux2KleinPipeline is `image`.
    result = pipeline(
        prompt=prompt,
        image=image,
        height=size,
        width=size,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    out = result.images[0]
    assert isinstance(out, Image.Image)
    assert out.size == (size, size)
    return np.asarray(out)


def _input_photo(width: int = 96, height: int = 80) -> Image.Image:
    rng = np.random.default_rng(7)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = 0.5 * gradient + 0.5 * rng.uniform(0, 255, size=(height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")


def test_saved_folder_loads_as_small_klein_pipeline_and_is_not_rewritten(saved_path, pipe):
    assert isinstance(pipe, Flux2KleinPipeline)
    assert pipe.config.is_distilled
    assert pipe.vae_scale_factor * 2 == 16  # valid output sizes are multiples of 16
    assert _folder_bytes(saved_path) < 1_000_000

    # The reloaded tokenizer keeps its chat template and pads to the pipeline's 512 tokens.
    text = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert "x" in text
    ids = pipe.tokenizer(text, padding="max_length", max_length=512, truncation=True)["input_ids"]
    assert len(ids) == 512

    index = saved_path / "model_index.json"
    before = index.stat().st_mtime_ns
    assert save_tiny_klein(saved_path) == saved_path
    assert index.stat().st_mtime_ns == before
    assert not [p for p in saved_path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("size", [64, 128])
def test_text_to_image_returns_non_constant_image_of_requested_size(pipe, size):
    pixels = _generate(pipe, size)
    assert pixels.shape == (size, size, 3)
    assert pixels.std() > 0


@pytest.mark.parametrize("size", [64, 128])
def test_edit_returns_requested_size_and_depends_on_input_image(pipe, size):
    text_only = _generate(pipe, size)
    edited = _generate(pipe, size, image=_input_photo())
    assert edited.shape == (size, size, 3)
    assert not np.array_equal(edited, text_only)


def test_same_seed_reproduces_and_other_seed_differs(pipe):
    first = _generate(pipe, 64, seed=3)
    again = _generate(pipe, 64, seed=3)
    other = _generate(pipe, 64, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_in_memory_pipeline_matches_the_saved_one(pipe):
    in_memory = build_tiny_klein_pipeline(seed=0)
    in_memory.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_generate(in_memory, 64), _generate(pipe, 64))


def _crash_before_model_index(target: pathlib.Path) -> None:
    (target / "transformer").mkdir(parents=True)
    (target / "transformer" / "config.json").write_text("{")  # cut off mid-write
    (target / "stray.bin").write_bytes(b"\0" * 10)


def _component_folder_lost(target: pathlib.Path) -> None:
    save_tiny_klein(target)
    for f in (target / "vae").iterdir():
        f.unlink()
    (target / "vae").rmdir()
    (target / "stray.bin").write_bytes(b"\0" * 10)


@pytest.mark.parametrize("damage", [_crash_before_model_index, _component_folder_lost])
def test_half_written_folder_is_rebuilt(tmp_path, damage):
    target = tmp_path / "tiny-klein"
    damage(target)

    assert save_tiny_klein(target) == target

    assert (target / "model_index.json").is_file()
    assert not (target / "stray.bin").exists()
    rebuilt = DiffusionPipeline.from_pretrained(target)
    assert isinstance(rebuilt, Flux2KleinPipeline)
    assert sorted(os.listdir(tmp_path)) == ["tiny-klein"]  # no temp folder left behind
