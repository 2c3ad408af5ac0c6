"""Preflight checks what each role's backend needs: an endpoint for ``openai``, a local folder for
``transformers``; a model that cannot serve its role is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.runs.preflight import EndpointUnreachableError, check_endpoints
from graph.runs.runner import start_run

CLOSED = "http://127.0.0.1:9/v1"  # nothing listens there


def _folder(tmp_path: Path, name: str, config: dict) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_an_in_process_planner_needs_no_endpoint(make_context, tmp_path):
    # The planner's URL points nowhere; only the critic's endpoint (the scripted server) is asked.
    text_only = _folder(tmp_path, "smol", {"model_type": "llama"})
    check_endpoints(make_context(planner_backend="transformers", planner_model=text_only, planner_base_url=CLOSED))


def test_a_missing_local_model_folder_is_refused_before_the_run(make_context, runs_dir, tmp_path):
    context = make_context(
        planner_backend="transformers", planner_model=str(tmp_path / "nope"), planner_base_url=CLOSED
    )
    with pytest.raises(EndpointUnreachableError, match=r"planner model folder .*nope does not exist"):
        start_run("How do I fold a paper crane?", context, preflight=True)
    assert not Path(runs_dir).exists()


def test_a_text_only_critic_is_refused_because_it_cannot_see_images(make_context, runs_dir, tmp_path):
    text_only = _folder(tmp_path, "smol", {"model_type": "llama"})
    context = make_context(critic_backend="transformers", critic_model=text_only, critic_base_url=CLOSED)
    with pytest.raises(EndpointUnreachableError, match="cannot see images .*text-only llama"):
        start_run("How do I fold a paper crane?", context, preflight=True)
    assert not Path(runs_dir).exists()


def test_a_vision_critic_folder_passes(make_context, tmp_path):
    vlm = _folder(tmp_path, "vlm", {"model_type": "qwen3_vl", "vision_config": {}})
    check_endpoints(make_context(critic_backend="transformers", critic_model=vlm, critic_base_url=CLOSED))
