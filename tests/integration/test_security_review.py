"""An invalid plan edit sent straight to the graph (Studio, the SDK, an embedded
``Command(resume=...)``) leaves the run waiting for review with the error, and a valid answer
afterwards still continues it."""

from __future__ import annotations

from langgraph.types import Command

from checkpoints.saver import open_checkpointer
from conftest import REQUEST
from graph.builder import build_graph
from graph.runs.runner import resume_run, start_run

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
