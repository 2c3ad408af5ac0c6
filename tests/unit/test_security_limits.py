"""Numeric settings are finite and ranged, booleans from the environment have a strict
spelling, and requests are bounded: all refused with the setting named, before a run exists."""

from __future__ import annotations

import pytest

from graph.context import Context
from graph.runs.runner import MAX_REQUEST_CHARS, validate_request


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"vlm_timeout_s": float("nan")}, "vlm_timeout_s=nan must be a finite number"),
        ({"vlm_temperature": float("inf")}, "vlm_temperature=inf must be a finite number"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan must be a finite number"),
        ({"vlm_max_tokens": 10**12}, "vlm_max_tokens=1000000000000 is over its limit"),
        ({"seed": -1}, "seed and vlm_temperature must be >= 0"),
        ({"seed": 10**20}, "is over its limit"),
        ({"max_plan_steps": 0}, "max_plan_steps >= 1"),
    ],
)
def test_out_of_range_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match="invalid run settings") as refused:
        Context(**settings)
    assert message in str(refused.value)


def test_nan_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_VLM_TIMEOUT_S", "nan")
    with pytest.raises(ValueError, match="vlm_timeout_s=nan must be a finite number"):
        Context()


@pytest.mark.parametrize(
    "raw, value", [("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("off", False)]
)
def test_boolean_environment_values_with_a_known_spelling(monkeypatch, raw, value):
    monkeypatch.setenv("INTERLEAVE_REVIEW_PLAN", raw)
    assert Context().review_plan is value


def test_a_boolean_environment_value_of_unknown_spelling_is_refused(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_REVIEW_PLAN", "maybe")
    with pytest.raises(ValueError, match="INTERLEAVE_REVIEW_PLAN='maybe' is not a valid bool.*true"):
        Context()


def test_the_plan_cap_has_the_paper_sized_default():
    assert Context().max_plan_steps == 30


@pytest.mark.parametrize(
    "request_text, message",
    [
        ("x" * (MAX_REQUEST_CHARS + 1), "characters long"),
        ("fold a crane\x00", "control characters (\\x00)"),
        ("fold \x1b[2J a crane", "control characters (\\x1b)"),
    ],
)
def test_oversized_and_control_character_requests_are_refused(request_text, message):
    with pytest.raises(ValueError) as refused:
        validate_request(request_text, [])
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "request_text, images, message",
    [
        (12345, [], "the request is text, not int"),
        ("a crane", "a.png", "images is a list of paths"),
    ],
)
def test_wrong_types_get_a_clear_error(request_text, images, message):
    with pytest.raises(ValueError, match=message):
        validate_request(request_text, images)


def test_a_multiline_request_is_fine():
    assert validate_request("Step one\n\tthen two", []) == "Step one\n\tthen two"
