"""Real weights behind real third-party OpenAI-compatible servers, on 127.0.0.1.

The model is SmolLM2-135M-Instruct (text-only, real weights: ``smollm2_folder`` in conftest).
Servers: Hugging Face's ``transformers serve`` (runs in ``make test``) and llama.cpp's
``llama_cpp.server`` (opt-in, ``pytest -m llamacpp``: llama-cpp-python builds from source; see the
README for the measured build time; ``INTERLEAVE_LLAMACPP_PYTHON`` names the python of a separate
environment that has it). What each server does with our requests:

- transformers serve 5.23: takes ``max_tokens`` and ``max_completion_tokens``; ignores
  ``response_format`` (replies are unconstrained);
- llama.cpp server 0.3.36: takes ``max_tokens`` only; string content only (with a text-only
  model, a message with images is HTTP 500); structured output as ``{"type": "json_object",
  "schema": ...}`` (``maxItems`` honoured) and HTTP 500 for ``json_schema``.

``make test`` builds the llama.cpp environment (once) and runs the ``llamacpp`` tests with the rest.
"""

from __future__ import annotations

import json
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
@pytest.mark.parametrize("kind", ["plan", "verdict"])
def test_llamacpp_structured_output_in_its_own_dialect_gives_a_parsable_answer(llamacpp_server, runs_dir, kind):
    """json_object + schema is compiled to a grammar by llama.cpp: the reply is the answer object."""
    from graph.context import Context
    from nodes.adapters import structured_output
    from tools.replies.parsing import parse_verdict

    url, name = llamacpp_server
    ctx = Context(vlm_structured_output="json_object", runs_dir=runs_dir, max_plan_steps=2)
    model = openai_model(url, "none", name, 256, 0.0, REQUEST_TIMEOUT_S, 0)
    ask = {
        "plan": "Plan two pictures of a paper crane being folded.",
        "verdict": "A picture was asked to show a red ball and it shows a red ball. Did the step succeed?",
    }[kind]
    text, finish = complete(model, _messages(ask), "planner", **structured_output(ctx, kind))
    assert finish == "stop", text
    assert text.lstrip().startswith("{") and "<answer>" not in text  # the bare object
    if kind == "plan":
        _, steps = parse_plan(text)
        assert 1 <= len(steps) <= 2 and steps[0]["step_number"] == 1  # maxItems = max_plan_steps
    else:
        _, success, refine = parse_verdict(text)
        assert isinstance(success, bool) and isinstance(refine, str)


def _run_args(runs_dir: str, pipeline: Path, planner_url: str, critic_url: str, **flags) -> list[str]:
    """``interleave run`` with the planner at ``planner_url`` and the critic at ``critic_url``."""
    from graph.runs.demo import DEMO_SIZE, DEMO_STEPS

    settings = {
        "planner-base-url": planner_url,
        "planner-model": "smollm2",
        "planner-api-key": "none",
        "critic-base-url": critic_url,
        "critic-model": demo_script.CRITIC_MODEL,
        "critic-api-key": "none",
        "generator-model": str(pipeline),
        "device": "cpu",
        "dtype": "float32",
        "width": DEMO_SIZE,
        "height": DEMO_SIZE,
        "num-inference-steps": DEMO_STEPS,
        "vlm-retries": 0,
        "vlm-temperature": 0.0,
        "vlm-timeout-s": REQUEST_TIMEOUT_S,
        **flags,
    }
    args = ["--runs-dir", runs_dir, "run", "How do I fold a paper crane?"]
    for flag, value in settings.items():
        args += [f"--{flag}", str(value)]
    return args


@pytest.mark.llamacpp
@pytest.mark.parametrize("form", ["json_object", "auto"])
def test_interleave_run_plans_on_llamacpp_with_structured_output(
    llamacpp_server, runs_dir, tiny_pipeline, capsys, form
):
    """``interleave run`` with the planner on llama.cpp's server, no proxy: constrained to the plan
    schema (llama.cpp's dialect; ``auto`` finds it after llama.cpp refuses json_schema), with
    max_plan_steps as the schema's maxItems, the real model's plan is used and the run finishes."""
    from graph.cli.main import main

    url, _ = llamacpp_server
    with ScriptedChatServer(demo_script.respond) as critic:
        args = _run_args(
            runs_dir,
            tiny_pipeline,
            url,
            critic.base_url,
            **{"vlm-structured-output": form, "planner-max-tokens": 384, "max-plan-steps": 3},
        )
        code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    document = json.loads(next(Path(runs_dir).rglob("document.json")).read_text())
    assert [s["step_number"] for s in document["steps"]] == [1, 2, 3]
    assert all(s["prompt"] and s["image"] for s in document["steps"])
    if form == "auto":
        assert document["structured_output"][url] == "json_object"


@pytest.mark.llamacpp
def test_interleave_run_on_llamacpp_unconstrained_fails_with_the_model_prose_saved(
    llamacpp_server, runs_dir, tiny_pipeline, capsys
):
    """Structured output off: SmolLM2 (Q4_1 under llama.cpp, greedy) answers in prose; the run
    fails naming the saved replies and how to go on (pinned)."""
    from graph.cli.main import main

    url, _ = llamacpp_server
    with ScriptedChatServer(demo_script.respond) as critic:
        code = main(_run_args(runs_dir, tiny_pipeline, url, critic.base_url, **{"planner-max-tokens": 48}))
    err = capsys.readouterr().err
    assert code == 1 and "no usable plan in 1 tries" in err and "interleave resume" in err
    failures = json.loads(next(Path(runs_dir).rglob("planner-failures-*.json")).read_text())
    assert [(f["reason"], f["finish_reason"]) for f in failures] == [("no_answer", "length")]
    assert failures[0]["reply"].startswith("To fold a paper crane, you need to use scissors.")


@pytest.mark.llamacpp
def test_a_critic_on_a_text_only_llamacpp_model_fails_naming_the_fix(llamacpp_server, runs_dir, tiny_pipeline):
    """The critic sends images; llama.cpp with a text-only model fails in its chat template
    (HTTP 500). With ``auto`` every form is refused the same way: the run fails saying the server
    takes no images and what to serve instead, and no form is learnt for the endpoint."""
    from nodes import adapters

    url, name = llamacpp_server
    adapters._auto_choice.pop(url, None)  # an earlier test's run may have taught it json_object
    with ScriptedChatServer(demo_script.respond) as planner:
        context = demo_context(
            runs_dir,
            planner.base_url,
            tiny_pipeline,
            critic_base_url=url,
            critic_model=name,
            critic_max_tokens=32,
            vlm_retries=0,
            vlm_structured_output="auto",
            vlm_timeout_s=REQUEST_TIMEOUT_S,
        )
        outcome = start_run("How do I fold a paper crane?", context)
    assert outcome.status == "failed"
    message = str(outcome.error)
    assert "HTTP 500" in message and "the server takes none" in message and "critic_base_url" in message
    assert "--clip_model_path" in message
    assert url not in adapters._auto_choice
