"""An invalid plan edit sent straight to the graph (Studio, the SDK, an embedded
``Command(resume=...)``) leaves the run waiting for review with the error, and a valid answer
afterwards still continues it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langgraph.types import Command

from checkpoints.saver import open_checkpointer
from conftest import REQUEST
from graph.builder import build_graph
from graph.cli.main import EXIT_BAD_INPUT, main
from graph.runs.demo import demo_context
from graph.runs.runner import resume_run, start_run
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer

BAD_PLAN = {
    "plan": [{"step_number": 5, "step_name": "late", "instruction": "x", "prompt": "a cup", "auxiliary_text": None}]
}


def test_a_bad_edit_keeps_the_run_waiting_and_a_later_approval_finishes_it(make_context, runs_dir):
    context = make_context(review_plan=True)
    assert start_run(REQUEST, context, run_id="reviewed").status == "awaiting_review"
    config = {"configurable": {"thread_id": "reviewed"}}
    with open_checkpointer(runs_dir) as saver:
        graph = build_graph(saver)
        graph.invoke(Command(resume=BAD_PLAN), config, context=context, durability="sync")
        snapshot = graph.get_state(config)
        assert snapshot.next == ("review",)
        question = snapshot.interrupts[0].value
        assert "the edited plan is not valid" in question["error"] and question["plan"]
        # a second bad answer is reported the same way, and does not lock the run either
        graph.invoke(Command(resume={"plan": "nonsense"}), config, context=context, durability="sync")
        assert "approve" in graph.get_state(config).interrupts[0].value["error"]
    outcome = resume_run("reviewed", runs_dir, review={"approve": True})
    assert outcome.status == "finished", outcome.error


def _longer_plan(plan: list[dict], steps: int) -> list[dict]:
    """``plan`` padded with drawn steps to ``steps`` steps, each valid on its own."""
    extra = [
        {**plan[-1], "step_number": n, "step_name": f"more {n}", "prompt": f"edit {n}"}
        for n in range(len(plan) + 1, steps + 1)
    ]
    return plan + extra


def test_an_edit_longer_than_max_plan_steps_is_refused_and_the_run_keeps_waiting(
    make_context, runs_dir, tmp_path, capsys
):
    context = make_context(review_plan=True, max_plan_steps=3)
    paused = start_run(REQUEST, context, run_id="capped")
    assert paused.status == "awaiting_review" and paused.review["max_plan_steps"] == 3
    too_long = {"plan": _longer_plan(paused.review["plan"], 4)}
    # through the CLI/runner: refused before anything changes
    with pytest.raises(ValueError, match="4 steps, over this run's max_plan_steps=3; shorten it"):
        resume_run("capped", runs_dir, review=too_long)
    plan_file = tmp_path / "long.json"  # the command line: interleave resume --plan-file
    plan_file.write_text(json.dumps(too_long["plan"]))
    assert main(["--runs-dir", runs_dir, "resume", "capped", "--plan-file", str(plan_file)]) == EXIT_BAD_INPUT
    assert "over this run's --max-plan-steps=3; shorten it" in capsys.readouterr().err
    # straight to the graph (Studio, the SDK): the run keeps waiting, the error in the new question
    config = {"configurable": {"thread_id": "capped"}}
    with open_checkpointer(runs_dir) as saver:
        graph = build_graph(saver)
        graph.invoke(Command(resume=too_long), config, context=context, durability="sync")
        snapshot = graph.get_state(config)
        assert snapshot.next == ("review",)
        assert "over this run's max_plan_steps=3" in snapshot.interrupts[0].value["error"]
        assert len(snapshot.values["plan"]) == 3 and not snapshot.values.get("attempts")
    outcome = resume_run("capped", runs_dir, review={"plan": paused.review["plan"][:2]})
    assert outcome.status == "finished", outcome.error
    assert len(json.loads((Path(outcome.document_dir) / "document.json").read_text())["steps"]) == 2


def test_a_planner_reply_longer_than_max_plan_steps_is_unusable_and_never_runs(runs_dir, tiny_pipeline):
    state = {"long": True, "calls": []}

    def planner_then_fixed(body: dict) -> str:
        state["calls"].append(body.get("model"))
        reply = demo_script.respond(body)
        if body.get("model") == demo_script.PLANNER_MODEL and state["long"]:
            plan = json.loads(reply.split("<answer>", 1)[1].split("</answer>", 1)[0])["execution_plan"]
            return f"<think>long</think><answer>{json.dumps({'execution_plan': _longer_plan(plan, 4)})}</answer>"
        return reply

    with ScriptedChatServer(planner_then_fixed) as server:
        context = demo_context(
            runs_dir, server.base_url, tiny_pipeline, max_plan_steps=3, vlm_retries=1, vlm_retry_backoff_s=0
        )
        outcome = start_run(REQUEST, context, run_id="long-plan")
        assert outcome.status == "failed" and "over max_plan_steps=3" in str(outcome.error)
        assert state["calls"] == [demo_script.PLANNER_MODEL] * 2  # retried once, no critic call
        saved = json.loads(next((Path(runs_dir) / "long-plan").glob("planner-failures-*.json")).read_text())
        assert len(saved) == 2 and all("over max_plan_steps=3" in f["error"] for f in saved)
        assert not list(Path(runs_dir).rglob("*.png"))  # none of the steps was drawn
        state["long"] = False  # the planner is fixed: the same run resumes and finishes
        done = resume_run("long-plan", runs_dir)
        assert done.status == "finished", done.error
