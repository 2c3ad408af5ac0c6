"""The model table: lookups, family detection, and requests refused before any GPU work."""

from __future__ import annotations

import inspect
import json

import pytest
from PIL import Image

from tools.generator import diffusion
from tools.generator.models import (
    FAMILIES,
    UnsupportedModelError,
    call_kwargs,
    check_images,
    check_request,
    model_spec,
    spec_for_pipeline,
)

KLEIN = FAMILIES["klein"]


def test_recommended_settings_per_family():
    assert (KLEIN.width, KLEIN.height, KLEIN.steps, KLEIN.guidance) == (1024, 1024, 4, 1.0)
    qwen = FAMILIES["qwen-image-edit"]
    assert (qwen.steps, qwen.guidance, qwen.guidance_kwarg, qwen.negative_prompt) == (40, 4.0, "true_cfg_scale", " ")
    assert FAMILIES["kontext"].max_images == 1 and FAMILIES["kontext"].area_kwarg == "max_area"
    assert {spec.size_multiple for spec in FAMILIES.values()} == {16}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_names_a_real_diffusers_class_and_real_call_arguments(family):
    import diffusers

    spec = FAMILIES[family]
    parameters = inspect.signature(getattr(diffusers, spec.pipeline_class).__call__).parameters
    used = {
        "prompt",
        "image",
        "width",
        "height",
        "num_inference_steps",
        "generator",
        "callback_on_step_end",
        spec.guidance_kwarg,
    }
    if spec.negative_prompt is not None:
        used.add("negative_prompt")
    if spec.area_kwarg:
        used.add(spec.area_kwarg)
    assert used <= set(parameters), used - set(parameters)


@pytest.mark.parametrize(
    "model, family",
    [
        ("black-forest-labs/FLUX.2-klein-4B", "klein"),
        ("black-forest-labs/flux.2-klein-9b", "klein"),
        ("black-forest-labs/FLUX.2-klein-base-4B", "klein-base"),
        ("Qwen/Qwen-Image-Edit-2511", "qwen-image-edit"),
        ("Qwen/Qwen-Image-Edit-2509", "qwen-image-edit"),
        ("black-forest-labs/FLUX.1-Kontext-dev", "kontext"),
    ],
)
def test_known_model_ids(model, family):
    assert model_spec(model).family == family


def _folder(tmp_path, index):
    tmp_path.joinpath("model_index.json").write_text(json.dumps(index))
    return str(tmp_path)


@pytest.mark.parametrize(
    "index, family",
    [
        ({"_class_name": "Flux2KleinPipeline", "is_distilled": True}, "klein"),
        ({"_class_name": "Flux2KleinPipeline", "is_distilled": False}, "klein-base"),
        ({"_class_name": "QwenImageEditPlusPipeline"}, "qwen-image-edit"),
        ({"_class_name": "FluxKontextPipeline"}, "kontext"),
    ],
)
def test_local_folder_is_recognised_by_its_model_index(tmp_path, index, family):
    assert model_spec(_folder(tmp_path, index)).family == family


def test_unsupported_class_and_unknown_id_list_the_supported_families(tmp_path):
    with pytest.raises(UnsupportedModelError, match="StableDiffusionPipeline.*klein.*kontext"):
        model_spec(_folder(tmp_path, {"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnsupportedModelError, match="'someone/model' is neither.*Supported families: klein"):
        model_spec("someone/model")


def test_missing_folder_says_so(tmp_path):
    with pytest.raises(UnsupportedModelError, match="folder .*no-such-model' does not exist; check the path"):
        model_spec(str(tmp_path / "no-such-model"))


def test_folder_without_or_with_broken_model_index(tmp_path):
    with pytest.raises(UnsupportedModelError, match="has no model_index.json"):
        model_spec(str(tmp_path))
    tmp_path.joinpath("model_index.json").write_text("{")
    with pytest.raises(UnsupportedModelError, match="cannot be read as a diffusers model index"):
        model_spec(str(tmp_path))


def test_pipeline_object_is_mapped_by_its_class():
    def fake(name, **config):
        return type(name, (), {"config": config})()

    assert spec_for_pipeline(fake("Flux2KleinPipeline", is_distilled=True)).family == "klein"
    assert spec_for_pipeline(fake("FluxKontextPipeline")).family == "kontext"
    with pytest.raises(UnsupportedModelError, match="'FluxPipeline' is not a supported generator"):
        spec_for_pipeline(fake("FluxPipeline"))


@pytest.mark.parametrize(
    "request_, message",
    [
        (dict(width=1000), "width=1000 is not a multiple of 16 for klein; use 992 or 1008"),
        (dict(height=8), "height=8 must be an integer of at least 16 for klein; use e.g. 1024"),
        (dict(width=512.0), "width=512.0 must be an integer"),
        (dict(width=4096, height=2048), "4096x2048 is 8,388,608 pixels, over the 4,194,304 .* 2048x2048"),
        (dict(steps=0), "steps=0 is outside 1..50 for klein; its recommended value is 4"),
        (dict(steps=500), "steps=500 is outside 1..50"),
        (dict(guidance=-1.0), "guidance=-1.0 must be a finite number >= 0; klein recommends 1.0"),
        (dict(guidance=float("nan")), "guidance=nan"),
        (dict(n_images=5), "5 input images .* more than klein takes \\(4\\); drop 1 of the references"),
    ],
)
def test_bad_requests_name_the_value_and_the_fix(request_, message):
    arguments = dict(width=1024, height=1024, steps=4, guidance=1.0, n_images=1) | request_
    with pytest.raises(ValueError, match=message):
        check_request(KLEIN, **arguments)


def test_limits_differ_per_family():
    check_request(FAMILIES["klein-base"], width=1024, height=1024, steps=50, n_images=4)
    with pytest.raises(ValueError, match="2 input images .* more than kontext takes \\(1\\)"):
        check_request(FAMILIES["kontext"], width=1024, height=1024, steps=28, n_images=2)
    with pytest.raises(ValueError, match="over the 2,359,296 that qwen-image-edit"):
        check_request(FAMILIES["qwen-image-edit"], width=2048, height=2048, steps=40)


def test_input_images_the_pipeline_would_reject():
    with pytest.raises(ValueError, match="input image 2 is 32x100; klein needs at least 64 px"):
        check_images(KLEIN, [Image.new("RGB", (64, 64)), Image.new("RGB", (32, 100))])
    with pytest.raises(ValueError, match="900x100, an aspect ratio over 8:1 .* crop it"):
        check_images(KLEIN, [Image.new("RGB", (900, 100))])
    with pytest.raises(ValueError, match="is a str, not a PIL image"):
        check_images(KLEIN, ["photo.png"])


def test_call_arguments_per_family():
    source, extra = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 80))
    common = dict(width=64, height=48, steps=2, generator=None)

    klein = call_kwargs(KLEIN, prompt="p", guidance=1.0, images=[source, extra], **common)
    assert klein["image"] == [source, extra] and klein["guidance_scale"] == 1.0
    assert "negative_prompt" not in klein and "true_cfg_scale" not in klein
    assert "image" not in call_kwargs(KLEIN, prompt="p", guidance=1.0, images=[], **common)

    kontext = call_kwargs(FAMILIES["kontext"], prompt="p", guidance=2.5, images=[source], **common)
    assert kontext["image"] is source and kontext["max_area"] == 64 * 48

    qwen = FAMILIES["qwen-image-edit"]
    text_only = call_kwargs(qwen, prompt=["a", "b"], guidance=4.0, images=[], **common)
    assert text_only["negative_prompt"] == [" ", " "] and "guidance_scale" not in text_only
    (canvas,) = text_only["image"]
    assert canvas.size == (64, 48) and canvas.getpixel((0, 0)) == (255, 255, 255)
    no_cfg = call_kwargs(qwen, prompt="a", guidance=1.0, images=[source], **common)
    assert "negative_prompt" not in no_cfg and no_cfg["true_cfg_scale"] == 1.0


def test_generate_refuses_before_touching_the_pipeline():
    class Flux2KleinPipeline:  # stands in for the real class: it must never be called
        config = {"is_distilled": True}

        def __call__(self, **kwargs):
            raise AssertionError("the pipeline ran")

    pipe = Flux2KleinPipeline()
    good = dict(prompt="p", seed=1, width=64, height=64, steps=4, guidance=1.0)
    with pytest.raises(ValueError, match="width=60 is not a multiple of 16"):
        diffusion.generate(pipe, **good | {"width": 60})
    with pytest.raises(ValueError, match="more than klein takes"):
        diffusion.generate(pipe, **good, source=Image.new("RGB", (64, 64)), references=[Image.new("RGB", (64, 64))] * 4)
    # in a batch, one bad request stops the whole batch before any call
    with pytest.raises(ValueError, match="steps=99 is outside"):
        diffusion.generate_batch(pipe, [good, good | {"steps": 99}])
    with pytest.raises(ValueError, match="unknown keys \\['strength'\\]"):
        diffusion.generate_batch(pipe, [good | {"strength": 0.5}])
