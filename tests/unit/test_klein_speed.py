"""tools.generator.klein_speed on the tiny klein pipeline (CPU): the levers must not change the pictures.

Compilation, cuDNN attention, the text-encoder CUDA graph and fp8 need a GPU; here they must be
skipped with a logged reason, and every lever that does apply on CPU must keep text-to-image and
edit outputs equal to the unoptimized pipeline at the same seed.  The GPU numbers come from
``python -m evals.perf.generator`` on the device machine.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tools.generator.klein_speed import Fp8Linear, optimize_pipeline
from tools.doubles.tiny_klein import build_tiny_klein_pipeline

SIZE = 64
LAYERS = (3, 6, 9)  # fewer than the tiny text encoder's 28, so trimming has something to drop


def generate(pipe, image=None, seed=0):
    return pipe(
        prompt="a red bicycle",
        image=image,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        text_encoder_out_layers=LAYERS,
    ).images[0]


@pytest.fixture(scope="module")
def outputs_before_and_after():
    from PIL import Image

    pipe = build_tiny_klein_pipeline()
    pipe.set_progress_bar_config(disable=True)
    before_t2i = generate(pipe)
    source = Image.fromarray((before_t2i * 255).round().astype("uint8"))
    before_edit = generate(pipe, image=source, seed=1)
    embeds_before = pipe.encode_prompt("a red bicycle", device="cpu", text_encoder_out_layers=LAYERS)[0]
    layers_before = len(pipe.text_encoder.model.layers)

    applied = optimize_pipeline(pipe, compile=False, text_encoder_layers=LAYERS)
    after = {
        "t2i": generate(pipe),
        "edit": generate(pipe, image=source, seed=1),
        "embeds": pipe.encode_prompt("a red bicycle", device="cpu", text_encoder_out_layers=LAYERS)[0],
    }
    before = {"t2i": before_t2i, "edit": before_edit, "embeds": embeds_before}
    return pipe, applied, before, after, layers_before


@pytest.mark.parametrize("case", ["t2i", "edit"])
def test_cpu_levers_keep_the_images(outputs_before_and_after, case):
    _pipe, _applied, before, after, _ = outputs_before_and_after
    assert before[case].std() > 0.05  # a real picture, not a flat one
    # fused q/k/v is the same arithmetic; channels-last convolutions may round differently.
    np.testing.assert_allclose(after[case], before[case], atol=1e-4)


def test_text_encoder_trim_drops_unread_layers_and_keeps_embeddings(outputs_before_and_after):
    pipe, applied, before, after, layers_before = outputs_before_and_after
    assert "text_encoder_trim" in applied
    assert layers_before == 28 and len(pipe.text_encoder.model.layers) == max(LAYERS) + 1
    assert torch.equal(after["embeds"], before["embeds"])


def test_applied_levers_on_cpu(outputs_before_and_after):
    _pipe, applied, *_ = outputs_before_and_after
    assert applied == ["fuse_qkv", "text_encoder_trim"]


def test_gpu_only_levers_are_skipped_with_a_reason_on_cpu(caplog):
    pipe = build_tiny_klein_pipeline()
    with caplog.at_level(logging.INFO, logger="tools.generator.klein_speed"):
        applied = optimize_pipeline(pipe, fp8=True, attention_backend="_native_cudnn", cache_dir=None)
    assert "image_io_on_device" not in applied
    assert not {"compile_blocks", "compile_vae", "fp8", "text_encoder_cuda_graph"} & set(applied)
    assert not any(lever.startswith("attention:") for lever in applied)
    skipped = caplog.text
    for lever in ("compile", "fp8", "attention:_native_cudnn", "text_encoder_cuda_graph", "image_io_on_device"):
        assert f"skipped {lever}: " in skipped and "not on a CUDA device" in skipped


def test_optimizing_twice_is_harmless():
    pipe = build_tiny_klein_pipeline()
    pipe.set_progress_bar_config(disable=True)
    first = optimize_pipeline(pipe, compile=False, vae_channels_last=True)
    before = generate(pipe)
    assert optimize_pipeline(pipe, compile=False, vae_channels_last=True) == first
    np.testing.assert_array_equal(generate(pipe), before)


def test_fp8_linear_stays_close_to_the_bf16_layer():
    # torch._scaled_mm also runs on CPU, so the quantisation arithmetic is checked here.
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512, bias=True).to(torch.bfloat16)
    x = torch.randn(2, 48, 256, dtype=torch.bfloat16) * 3
    x[0, 0] = 0  # an all-zero token must not divide by zero
    try:
        with torch.no_grad():
            out, ref = Fp8Linear(linear)(x), linear(x).float()
    except (RuntimeError, NotImplementedError) as error:  # a CPU build without float8 matmul
        pytest.skip(f"torch._scaled_mm unavailable on this CPU build: {error}")
    assert out.shape == ref.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    rel = float((out.float() - ref).norm() / ref.norm())
    assert rel < 0.06  # e4m3 keeps 3 mantissa bits: a few percent per layer


def test_device_image_conversion_is_bit_identical_to_diffusers():
    # The fast paths run here on the CPU "device"; on a GPU the same tensor arithmetic applies.
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
    from PIL import Image

    from tools.generator.klein_speed import _install_image_io

    reference, fast = Flux2ImageProcessor(vae_scale_factor=16), Flux2ImageProcessor(vae_scale_factor=16)
    _install_image_io(fast, torch.device("cpu"))
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    for mode in ("crop", "default"):
        expected = reference.preprocess(picture, height=96, width=128, resize_mode=mode)
        got = fast.preprocess(picture, height=96, width=128, resize_mode=mode)
        assert torch.equal(got, expected) and got.stride()[1:] == expected.stride()[1:]
    # A size that needs cropping takes diffusers' own path.
    assert torch.equal(
        fast.preprocess(picture, height=64, width=64, resize_mode="crop"),
        reference.preprocess(picture, height=64, width=64, resize_mode="crop"),
    )
    decoded = (torch.randn(2, 3, 32, 48) * 0.8).to(torch.bfloat16)
    for got, expected in zip(fast.postprocess(decoded), reference.postprocess(decoded)):
        assert np.array_equal(np.asarray(got), np.asarray(expected))
