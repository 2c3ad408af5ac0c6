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


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 1000}, "width=1000 must be a positive multiple of 16"),
    ({"num_inference_steps": 0}, "num_inference_steps=0"),
    ({"max_generations_per_step": 0}, "max_generations_per_step=0"),
    ({"dtype": "fp8"}, "dtype='fp8'"),
    ({"planner_base_url": "localhost:8000"}, "must be an http"),
])
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Context(**kwargs)


def test_stored_settings_leave_out_api_keys_and_round_trip():
    context = Context(planner_api_key="sk-secret", seed=3)
    record = context.to_record()
    assert "planner_api_key" not in record and "sk-secret" not in str(record)
    assert Context.from_record(record).seed == 3
