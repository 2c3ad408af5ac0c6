"""Run settings: defaults < environment < explicit values, and bad values named with a fix."""

import pytest

from graph.context import Context


def test_environment_overrides_default_and_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_SEED", "5")
    monkeypatch.setenv("INTERLEAVE_PLANNER_MODEL", "my-planner")
    assert Context().seed == 5
    assert Context().planner_model == "my-planner"
    assert Context(seed=9).seed == 9


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_WIDTH", "wide")
    with pytest.raises(ValueError, match="INTERLEAVE_WIDTH='wide'"):
        Context()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 1000}, "width=1000 must be a positive multiple of 16"),
        ({"num_inference_steps": -1}, "num_inference_steps=-1"),
        ({"guidance_scale": -0.5}, "guidance_scale=-0.5"),
        ({"critic_unparsed": "ignore"}, "critic_unparsed='ignore' must be one of regenerate, accept"),
        ({"reference_policy": "all"}, "reference_policy='all' must be one of previous"),
        ({"vlm_image_transport": "s3"}, "vlm_image_transport='s3'"),
        ({"vlm_max_concurrency": 0}, "vlm_max_concurrency must be >= 1"),
        ({"planner_backend": "vllm"}, "planner_backend='vllm' must be one of openai, transformers"),
        ({"max_generations_per_step": 0}, "max_generations_per_step=0"),
        ({"dtype": "fp8"}, "dtype='fp8'"),
        ({"planner_base_url": "localhost:8000"}, "must be an http"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Context(**kwargs)


def test_stored_settings_leave_out_api_keys_and_round_trip():
    context = Context(planner_api_key="sk-secret", seed=3)
    record = context.to_record()
    assert "planner_api_key" not in record and "sk-secret" not in str(record)
    assert Context.from_record(record).seed == 3


def test_a_transformers_backend_needs_no_http_endpoint():
    context = Context(critic_backend="transformers", critic_base_url="unused", critic_model="/models/c")
    assert context.critic_backend == "transformers"


def test_model_defaults_are_the_default_for_size_steps_and_guidance():
    from nodes.generator import generation_settings
    from tools.generator.models import FAMILIES

    assert generation_settings(Context(), FAMILIES["klein"]) == {
        "width": 1024,
        "height": 1024,
        "steps": 4,
        "guidance": 1.0,
    }
    assert generation_settings(Context(), FAMILIES["qwen-image-edit"])["steps"] == 40
    assert generation_settings(
        Context(num_inference_steps=8, guidance_scale=0.0, width=512), FAMILIES["qwen-image-edit"]
    ) == {"width": 512, "height": 1024, "steps": 8, "guidance": 0.0}
