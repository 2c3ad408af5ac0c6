"""The whole loop with the tiny klein pipeline and a scripted chat server over real HTTP."""

import json
from pathlib import Path

from PIL import Image

from conftest import REQUEST
from graph.runs.runner import start_run
from tools.doubles import demo_script
from tools.store.images import ImageStore
from tools.doubles.scripted_chat import ScriptedChatServer, count_images, message_text


def critic_requests(server):
    return [r for r in server.requests if r["model"] == demo_script.CRITIC_MODEL]


def test_run_plans_generates_critiques_and_writes_the_document(make_context, chat_server):
    context = make_context()
    seen = []
    outcome = start_run(REQUEST, context, on_event=seen.append)
    assert outcome.status == "finished", outcome.error

    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    steps = record["steps"]
    assert [s["step_number"] for s in steps] == [1, 2, 3]
    assert [len(s["attempts"]) for s in steps] == [1, 2, 1]  # step 2 rejected once, regenerated
    rejected, accepted = steps[1]["attempts"]
    assert rejected["verdict"]["success"] is False
    assert accepted["prompt"] == rejected["verdict"]["refine_prompt"] == demo_script.REFINED_SECOND_STEP_PROMPT
    assert accepted["seed"] != rejected["seed"]
    # Regeneration edits the same source image; each step edits the image accepted before it.
    assert rejected["source"] == accepted["source"] == steps[0]["image"]
    assert steps[2]["attempts"][0]["source"] == steps[1]["image"] == accepted["image"]
    assert steps[0]["attempts"][0]["source"] is None  # step 1 is text-to-image

    store = ImageStore(context.runs_dir)
    for step in steps:
        assert store.load(step["image"]).size == (context.width, context.height)
        assert step["text"] == demo_script.demo_plan(REQUEST)[step["step_number"] - 1]["instruction"]

    # The critic saw [before, after]; for step 1 the before-image is a white canvas.
    first_critic = critic_requests(chat_server)[0]
    assert count_images(first_critic) == 2
    assert "Rewritten prompt:" in message_text(first_critic["messages"][-1])
    import base64
    import io

    before_url = first_critic["messages"][-1]["content"][0]["image_url"]["url"]
    before = Image.open(io.BytesIO(base64.b64decode(before_url.split(",", 1)[1]))).convert("RGB")
    assert before.size == (context.width, context.height)
    assert before.getextrema() == ((255, 255), (255, 255), (255, 255))  # all white
    # The after-image is sent as the very PNG the store holds.
    after_url = first_critic["messages"][-1]["content"][1]["image_url"]["url"]
    assert base64.b64decode(after_url.split(",", 1)[1]) == store.read_png(steps[0]["attempts"][0]["image"])

    kinds = [e["event"] for e in seen if e["event"] != "node_started"]
    assert seen[0]["event"] == "node_started" and seen[0]["node"] == "plan"  # the display hears the planner start
    assert kinds[0] == "plan_ready" and kinds[-1] == "run_finished"
    assert kinds.count("step_accepted") == 3 and kinds.count("denoise_progress") == 4 * context.num_inference_steps
    assert (Path(outcome.document_dir) / "document.md").read_text().count("![") == 3


def test_last_allowed_attempt_is_accepted_without_a_critic_call(make_context, chat_server):
    outcome = start_run(REQUEST, make_context(max_generations_per_step=1))
    assert outcome.status == "finished", outcome.error
    assert critic_requests(chat_server) == []


def test_critic_that_always_rejects_gets_three_generations_and_two_critic_calls(make_context, runs_dir, tiny_pipeline):
    def always_reject(body):
        if body["model"] == demo_script.CRITIC_MODEL:
            return '<think>no</think><answer>{"previous_step_success": false, "refine_prompt": "again"}</answer>'
        return demo_script.respond(body)

    with ScriptedChatServer(always_reject) as server:
        from graph.runs.demo import demo_context

        outcome = start_run(REQUEST, demo_context(runs_dir, server.base_url, tiny_pipeline))
        assert outcome.status == "finished", outcome.error
        assert len(critic_requests(server)) == 3 * 2  # 3 steps x (attempts 1 and 2 only)
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    for step in record["steps"]:
        assert [a["attempt"] for a in step["attempts"]] == [1, 2, 3]
        assert step["attempts"][2]["last_allowed"] and step["attempts"][2]["verdict"] is None
        assert step["image"] == step["attempts"][2]["image"]


def test_unusable_critic_reply_regenerates_with_same_prompt_and_new_seed(runs_dir, tiny_pipeline):
    calls = {"critic": 0}

    def garbled_once(body):
        if body["model"] == demo_script.CRITIC_MODEL:
            calls["critic"] += 1
            if calls["critic"] <= 2:  # first critic call and its one retry are garbage
                return "<think>I think the image is"
            return '<answer>{"previous_step_success": true, "refine_prompt": "ok"}</answer>'
        return demo_script.respond(body)

    with ScriptedChatServer(garbled_once) as server:
        from graph.runs.demo import demo_context

        context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_retries=1)
        outcome = start_run(REQUEST, context)
    assert outcome.status == "finished", outcome.error
    first, second = json.loads((Path(outcome.document_dir) / "document.json").read_text())["steps"][0]["attempts"]
    assert first["verdict"]["success"] is None and "not a valid verdict" in first["verdict"]["error"]
    # Its reason code once, in the parser's words: "... (truncated): ...", no "[truncated]" before it.
    assert first["verdict"]["error"].startswith("critic reply is not a valid verdict (truncated): ")
    assert first["verdict"]["error"].count("truncated") == 1
    assert second["prompt"] == first["prompt"] and second["seed"] != first["seed"]
    assert second["verdict"]["success"] is True


def test_a_planner_reply_that_did_not_parse_is_announced_before_it_is_asked_again(runs_dir, tiny_pipeline):
    """The person watching sees the re-ask while it happens (a progress line), not only a slow run."""
    import io

    from graph.cli.progress import ProgressPrinter

    calls = {"planner": 0}

    def garbled_once(body):
        if body["model"] == demo_script.PLANNER_MODEL:
            calls["planner"] += 1
            if calls["planner"] == 1:
                return '<think>plan</think><answer>{"execution_plan": ['
        return demo_script.respond(body)

    log = io.StringIO()
    with ScriptedChatServer(garbled_once) as server:
        from graph.runs.demo import demo_context

        context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_retries=2, vlm_retry_backoff_s=0.25)
        with ProgressPrinter(log) as printer:
            outcome = start_run(REQUEST, context, on_event=printer)
    assert outcome.status == "finished", outcome.error
    lines = log.getvalue().splitlines()
    retry = next(i for i, line in enumerate(lines) if "did not parse" in line)
    assert lines[retry].endswith("planner reply 1 of 3 did not parse (truncated); asking again in 0.25 s")
    assert "plan ready" in lines[retry + 1]


def test_input_image_as_data_url_reaches_the_planner_but_not_the_checkpoints(make_context, chat_server, runs_dir):
    import base64
    import io
    import sqlite3

    buffer = io.BytesIO()
    Image.effect_noise((48, 48), 60).convert("RGB").save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    outcome = start_run(REQUEST, make_context(), images=[url], run_id="with-image")
    assert outcome.status == "finished", outcome.error
    planner_call = [r for r in chat_server.requests if r["model"] == demo_script.PLANNER_MODEL][0]
    assert count_images(planner_call) == 1
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    assert record["input_images"][0]["width"] == 48
    with sqlite3.connect(Path(runs_dir) / "interleave.sqlite") as conn:
        row = conn.execute("SELECT images FROM runs WHERE run_id = 'with-image'").fetchone()[0]
    assert "base64" not in row and json.loads(row)[0].endswith(".png")
