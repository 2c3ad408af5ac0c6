"""Real weights behind real third-party OpenAI-compatible servers, on 127.0.0.1.

The model is SmolLM2-135M-Instruct (text-only, real weights: ``smollm2_folder`` in conftest).
Servers: Hugging Face's ``transformers serve`` (runs in ``make test``) and llama.cpp's
``llama_cpp.server`` (opt-in, ``pytest -m llamacpp``: llama-cpp-python builds from source; see the
README for the measured build time; ``INTERLEAVE_LLAMACPP_PYTHON`` names the python of a separate
environment that has it). What each server does with our requests:

- transformers serve 5.23: takes ``max_tokens`` and ``max_completion_tokens``; ignores
  ``response_format`` (replies are unconstrained);
- llama.cpp server 0.3.36: takes ``max_tokens`` only; string content only; structured output as
  ``{"type": "json_object", "schema": ...}`` and HTTP 500 for ``json_schema``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from graph.runs.demo import demo_context
from graph.runs.runner import start_run
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer
from tools.llm.chat import complete, openai_model, text_part
from tools.replies.parsing import parse_plan

STARTUP_S = 300
REQUEST_TIMEOUT_S = 600.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: list[str], port: int, log: Path):
    """Start a server process and wait until /v1/models answers."""
    out = log.open("w")
    # An empty Hub cache of its own: transformers serve scans the cache on startup and fails
    # when none exists; offline, nothing is downloaded into it.
    cache = log.parent / "hf-cache"
    cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + STARTUP_S
    url = f"http://127.0.0.1:{port}/v1"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"{command[:3]} did not answer in {STARTUP_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def transformers_server(smollm2_folder, tmp_path_factory):
    port = _free_port()
    entry = Path(sys.executable).with_name("transformers")
    process, url = _serve(
        [str(entry), "serve", str(smollm2_folder), "--device", "cpu", "--port", str(port)],
        port,
        tmp_path_factory.mktemp("logs") / "transformers-serve.log",
    )
    yield url, str(smollm2_folder)
    process.terminate()
    process.wait(30)


def _llamacpp_python() -> str:
    """The python whose ``llama_cpp.server`` the tests start: ``INTERLEAVE_LLAMACPP_PYTHON`` (a
    separate environment, since llama-cpp-python builds from source), else this one."""
    chosen = os.environ.get("INTERLEAVE_LLAMACPP_PYTHON")
    if chosen:
        if not Path(chosen).is_file():
            pytest.fail(
                f"INTERLEAVE_LLAMACPP_PYTHON={chosen} is not a file; point it at the python of an "
                f"environment with llama-cpp-python[server]==0.3.36"
            )
        return chosen
    pytest.importorskip(
        "llama_cpp.server",
        reason="pip install 'llama-cpp-python[server]==0.3.36', or set INTERLEAVE_LLAMACPP_PYTHON to a "
        "python that has it",
    )
    return sys.executable


@pytest.fixture(scope="module")
def llamacpp_server(smollm2_gguf, tmp_path_factory):
    port, name = _free_port(), "smollm2"
    process, url = _serve(
        [
            _llamacpp_python(),
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2_gguf),
            "--model_alias",
            name,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--n_ctx",
            "2048",
        ],
        port,
        tmp_path_factory.mktemp("logs") / "llamacpp.log",
    )
    yield url, name
    process.terminate()
    process.wait(30)


SERVERS = ["transformers_server", pytest.param("llamacpp_server", marks=pytest.mark.llamacpp)]


def _messages(text: str):
    # Content parts, as the planner builds them: text-only ones must reach the server as a string.
    return [SystemMessage("You are a helpful assistant."), HumanMessage(content=[text_part(text)])]


@pytest.mark.parametrize("server", SERVERS)
def test_a_reply_budget_is_honoured_by_the_real_server(server, request):
    url, name = request.getfixturevalue(server)
    model = openai_model(url, "none", name, 5, 0.0, REQUEST_TIMEOUT_S, 0)
    text, finish = complete(model, _messages("Write a long story about a dragon."), "planner")
    assert finish == "length"
    assert text.strip() and len(text.split()) <= 5


def test_a_narrative_planner_run_through_the_graph_on_transformers_serve(
    transformers_server, runs_dir, tiny_pipeline, assert_smollm2_crane_prose
):
    """The planner is the real model (no proxy in between); the critic stays scripted, since the
    model cannot see images. transformers serve ignores response_format, so the model writes what
    it writes unconstrained: greedy, that is prose, and the run fails with it saved (pinned)."""
    url, name = transformers_server
    with ScriptedChatServer(demo_script.respond) as critic:
        context = demo_context(
            runs_dir,
            critic.base_url,
            tiny_pipeline,
            planner_base_url=url,
            planner_model=name,
            planner_max_tokens=48,
            vlm_retries=0,
            vlm_temperature=0.0,
            vlm_timeout_s=REQUEST_TIMEOUT_S,
        )
        outcome = start_run("How do I fold a paper crane?", context)
    assert_smollm2_crane_prose(outcome, runs_dir)


@pytest.mark.llamacpp
def test_llamacpp_structured_output_in_its_own_dialect_gives_a_plan(llamacpp_server, runs_dir, tiny_pipeline):
    url, name = llamacpp_server
    from nodes.adapters import structured_output
    from graph.context import Context

    ctx = Context(vlm_structured_output="json_object", runs_dir=runs_dir)
    model = openai_model(url, "none", name, 256, 0.0, REQUEST_TIMEOUT_S, 0)
    text, _ = complete(
        model,
        _messages("Plan two pictures of a paper crane being folded."),
        "planner",
        **structured_output(ctx, "plan"),
    )
    _, steps = parse_plan(text)
    assert steps and steps[0]["step_number"] == 1
