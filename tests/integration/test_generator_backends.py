"""Each generator family, loaded from a saved folder by the real loader and run on CPU.

Tiny random-weight pipelines of the real diffusers classes (klein from ``tools.doubles.tiny_klein``,
Kontext and Qwen-Image-Edit-Plus from ``tools.doubles.tiny_editors``) go through
``tools.generator.diffusion.load_pipeline`` / ``generate`` / ``generate_batch`` exactly as real weights
would, so the family-specific arguments (reference lists, ``max_area``, true CFG with a negative
prompt, the white canvas for step 1) reach the real ``__call__``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tools.generator import diffusion
from tools.generator.diffusion import GeneratorLoadError

KW = dict(width=64, height=64, steps=2, guidance=1.0)


def _photo(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).uniform(0, 255, size=(height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def calls(monkeypatch):
    """Record the keyword arguments of every real pipeline call."""
    recorded: list[dict] = []
    original = diffusion._run

    def spy(pipe, spec, batch, images):
        real_call = type(pipe).__call__

        def record(self, **kwargs):
            recorded.append(kwargs)
            return real_call(self, **kwargs)

        monkeypatch.setattr(type(pipe), "__call__", record)
        try:
            return original(pipe, spec, batch, images)
        finally:
            monkeypatch.setattr(type(pipe), "__call__", real_call)

    monkeypatch.setattr(diffusion, "_run", spy)
    return recorded


@pytest.fixture(scope="module")
def klein(tiny_pipeline):
    return diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")


# --- FLUX.2 [klein] --------------------------------------------------------------------------


def test_klein_text_to_image_is_deterministic_per_seed(klein):
    first = diffusion.generate(klein, prompt="a paper crane", seed=3, **KW)
    again = diffusion.generate(klein, prompt="a paper crane", seed=3, **KW)
    other = diffusion.generate(klein, prompt="a paper crane", seed=4, **KW)
    assert first.size == (64, 64)
    np.testing.assert_array_equal(_px(first), _px(again))
    assert not np.array_equal(_px(first), _px(other))


def test_klein_edit_uses_the_extra_reference(klein, calls):
    source, reference = _photo(1), _photo(2, 96, 64)
    edit = diffusion.generate(klein, prompt="put the cup on it", seed=5, source=source, **KW)
    with_reference = diffusion.generate(
        klein, prompt="put the cup on it", seed=5, source=source, references=[reference], **KW
    )
    assert with_reference.size == (64, 64)
    assert calls[1]["image"] == [source, reference]
    assert np.abs(_px(edit) - _px(with_reference)).mean() > 1


def test_klein_batch_matches_one_by_one_and_keeps_order(klein, calls):
    source = _photo(7)
    requests = [
        dict(prompt="a red bicycle", seed=11, **KW),
        dict(prompt="a small cat", seed=12, **KW),
        dict(prompt="a lighthouse", seed=13, **KW | {"width": 80}),  # another size: own call
        dict(prompt="make it blue", seed=14, source=source, **KW),
        dict(prompt="make it green", seed=15, source=source.copy(), **KW),  # same pixels: batched
        dict(prompt="make it red", seed=16, source=_photo(8), **KW),  # other source: own call
    ]
    batched = diffusion.generate_batch(klein, requests)
    assert [len(c["prompt"]) if isinstance(c["prompt"], list) else 1 for c in calls] == [2, 1, 2, 1]
    assert [image.size for image in batched] == [(64, 64)] * 2 + [(80, 64)] + [(64, 64)] * 3
    for index in (0, 1, 3, 4):  # the ones that shared a call
        alone = diffusion.generate(klein, **requests[index])
        difference = np.abs(_px(batched[index]) - _px(alone))
        # a batched matmul rounds differently: at most one grey level on a few pixels
        assert difference.max() <= 1 and difference.mean() < 0.05


def test_on_step_reports_every_denoising_step(klein):
    seen = []
    diffusion.generate(klein, prompt="a crane", seed=1, on_step=lambda d, t: seen.append((d, t)), **KW)
    assert seen == [(1, 2), (2, 2)]


def test_loaded_once_per_settings(tiny_pipeline, klein):
    assert diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32") is klein


def test_offload_needs_a_gpu_and_bad_values_are_named(tiny_pipeline):
    with pytest.raises(GeneratorLoadError, match="offload='model' .* use offload='none'"):
        diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32", offload="model")
    with pytest.raises(GeneratorLoadError, match="offload='fast' is not one of none, model, sequential"):
        diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32", offload="fast")


def test_unsupported_folder_is_refused_with_the_families(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(GeneratorLoadError, match="Supported families: klein"):
        diffusion.load_pipeline(str(tmp_path), "cpu", "float32")


# --- LoRA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA on the tiny klein transformer, made with PEFT and saved in diffusers' format."""
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tools.doubles.tiny_klein import build_tiny_klein_pipeline

    transformer = build_tiny_klein_pipeline().transformer
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    weights = get_peft_model_state_dict(transformer)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if "lora_B" in name:  # PEFT starts B at zero (a no-op LoRA); make it do something
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("lora")
    Flux2KleinPipeline.save_lora_weights(folder, transformer_lora_layers=weights)
    return folder


@pytest.fixture(scope="module")
def own_klein(tmp_path_factory):
    """A private copy of the tiny klein folder, so the LoRA variants cached by these tests are
    not counted as copies of the shared session model by other tests."""
    from tools.doubles.tiny_klein import save_tiny_klein

    return str(save_tiny_klein(tmp_path_factory.mktemp("models") / "tiny-klein-lora"))


def test_lora_changes_the_image_and_scale_zero_restores_it(own_klein, lora_dir):
    plain = diffusion.load_pipeline(own_klein, "cpu", "float32")
    base = diffusion.generate(plain, prompt="a paper crane", seed=3, **KW)
    styled_pipe = diffusion.load_pipeline(own_klein, "cpu", "float32", lora=str(lora_dir))
    assert styled_pipe is not plain
    styled = diffusion.generate(styled_pipe, prompt="a paper crane", seed=3, **KW)
    assert np.abs(_px(styled) - _px(base)).mean() > 5

    weights_file = str(lora_dir / "pytorch_lora_weights.safetensors")  # a file path works too
    off = diffusion.load_pipeline(own_klein, "cpu", "float32", lora=weights_file, lora_scale=0.0)
    np.testing.assert_array_equal(_px(diffusion.generate(off, prompt="a paper crane", seed=3, **KW)), _px(base))


def test_bad_lora_is_a_load_error(own_klein, tmp_path):
    with pytest.raises(GeneratorLoadError, match="LoRA .* could not be loaded onto the klein pipeline"):
        diffusion.load_pipeline(own_klein, "cpu", "float32", lora=str(tmp_path))


# --- FLUX.1 Kontext --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    from tools.doubles.tiny_editors import save_tiny_kontext

    path = save_tiny_kontext(tmp_path_factory.mktemp("models") / "tiny-kontext")
    return diffusion.load_pipeline(str(path), "cpu", "float32")


def test_kontext_keeps_the_requested_size_and_edits_one_image(kontext, calls):
    from diffusers import FluxKontextPipeline

    assert isinstance(kontext, FluxKontextPipeline)
    kw = KW | {"height": 48, "guidance": 2.5}
    text_only = diffusion.generate(kontext, prompt="a paper crane", seed=1, **kw)
    edit = diffusion.generate(kontext, prompt="make it blue", seed=1, source=_photo(3), **kw)
    assert text_only.size == edit.size == (64, 48)  # without max_area it would be ~1 MP
    assert "image" not in calls[0] and isinstance(calls[1]["image"], Image.Image)
    assert calls[1]["max_area"] == 64 * 48 and calls[1]["guidance_scale"] == 2.5
    with pytest.raises(ValueError, match="more than kontext takes \\(1\\)"):
        diffusion.generate(kontext, prompt="x", seed=1, source=_photo(3), references=[_photo(4)], **kw)


def test_kontext_batch_matches_one_by_one(kontext):
    source = _photo(5)
    requests = [dict(prompt=p, seed=s, source=source, **KW) for p, s in (("blue", 1), ("red", 2))]
    for together, alone in zip(
        diffusion.generate_batch(kontext, requests), [diffusion.generate(kontext, **r) for r in requests]
    ):
        assert np.abs(_px(together) - _px(alone)).max() <= 1


# --- Qwen-Image-Edit-Plus --------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from tools.doubles.tiny_editors import save_tiny_qwen_edit

    path = save_tiny_qwen_edit(tmp_path_factory.mktemp("models") / "tiny-qwen-edit")
    return diffusion.load_pipeline(str(path), "cpu", "float32")


@pytest.fixture
def small_vae_inputs(monkeypatch):
    """The pipeline VAE-encodes every input at ~1 MP whatever the output size; 64x64 keeps CPU fast."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as module

    monkeypatch.setattr(module, "VAE_IMAGE_SIZE", 64 * 64)


def test_qwen_edit_true_cfg_blank_canvas_and_several_images(qwen, calls, small_vae_inputs):
    from diffusers import QwenImageEditPlusPipeline

    assert isinstance(qwen, QwenImageEditPlusPipeline)
    kw = KW | {"height": 48, "guidance": 4.0}
    step_one = diffusion.generate(qwen, prompt="a paper crane", seed=1, **kw)
    source, reference = _photo(6), _photo(7)
    edit = diffusion.generate(qwen, prompt="fold it", seed=1, source=source, references=[reference], **kw)
    assert step_one.size == edit.size == (64, 48)
    (canvas,) = calls[0]["image"]  # step 1 edits a white canvas: the pipeline needs an image
    assert canvas.size == (64, 48) and canvas.getextrema() == ((255, 255),) * 3
    assert calls[1]["image"] == [source, reference]
    for call in calls:
        assert call["true_cfg_scale"] == 4.0 and call["negative_prompt"] == " "
        assert "guidance_scale" not in call

    calls.clear()
    requests = [dict(prompt=p, seed=s, source=source, **kw) for p, s in (("a", 1), ("b", 2))]
    assert [image.size for image in diffusion.generate_batch(qwen, requests)] == [(64, 48)] * 2
    assert len(calls) == 2  # the pipeline refuses batches: one call per request
