"""Plan review: the run pauses after planning until the plan is approved or edited."""

import json
from pathlib import Path

import pytest

from conftest import REQUEST, without_timings
from graph.cli.main import EXIT_AWAITING_REVIEW, EXIT_BAD_INPUT, EXIT_OK, main
from graph.runs.runner import resume_run, start_run


def record(outcome):
    return json.loads((Path(outcome.document_dir) / "document.json").read_text())


@pytest.fixture
def paused(make_context):
    events = []
    outcome = start_run(REQUEST, make_context(review_plan=True), run_id="paused", on_event=events.append)
    assert outcome.status == "awaiting_review", outcome.error
    # Only the planner ran (the display's node notices aside): nothing generated before the review.
    assert [e["event"] for e in events if e["event"] != "node_started"] == ["plan_ready"]
    assert [e["node"] for e in events if e["event"] == "node_started"] == ["plan", "review"]
    return outcome


def test_approved_plan_runs_as_without_review(paused, make_context, runs_dir):
    assert [s["step_number"] for s in paused.review["plan"]] == [1, 2, 3]
    again = resume_run("paused", runs_dir)  # no answer: still waiting, nothing done
    assert again.status == "awaiting_review"
    done = resume_run("paused", runs_dir, review={"approve": True})
    assert done.status == "finished", done.error
    plain = start_run(REQUEST, make_context(), run_id="plain")
    strip = lambda doc: without_timings({k: v for k, v in doc.items() if k != "settings"})
    assert strip(record(done)) == strip(record(plain))


def test_edited_plan_is_what_gets_generated(paused, runs_dir):
    plan = paused.review["plan"]
    plan[2]["prompt"] = "Show the crane hanging from a thread"
    done = resume_run("paused", runs_dir, review={"plan": plan[:3]})
    assert done.status == "finished", done.error
    steps = record(done)["steps"]
    assert steps[2]["prompt"] == steps[2]["attempts"][0]["prompt"] == "Show the crane hanging from a thread"


def test_cli_review_flow_and_bad_edits(capsys, runs_dir, chat_server, tiny_pipeline, tmp_path):
    settings = [
        "--planner-base-url",
        chat_server.base_url,
        "--critic-base-url",
        chat_server.base_url,
        "--planner-model",
        "demo-planner",
        "--critic-model",
        "demo-critic",
        "--generator-model",
        str(tiny_pipeline),
        "--device",
        "cpu",
        "--width",
        "64",
        "--height",
        "64",
        "--num-inference-steps",
        "2",
    ]
    code = main(["--runs-dir", runs_dir, "run", REQUEST, "--run-id", "r", "--review-plan", *settings])
    out = capsys.readouterr().out
    assert code == EXIT_AWAITING_REVIEW and "interleave resume r --approve-plan" in out

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"step_number": 1, "step_name": "only", "prompt": None}]))
    assert main(["--runs-dir", runs_dir, "resume", "r", "--plan-file", str(bad)]) == EXIT_BAD_INPUT
    assert "every step must be an image operation" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["--runs-dir", runs_dir, "resume", "r", "--plan-file", str(bad)]) == EXIT_BAD_INPUT
    assert "is not valid JSON" in capsys.readouterr().err

    good = tmp_path / "plan.json"
    good.write_text(
        json.dumps(
            {
                "execution_plan": [
                    {
                        "step_number": 1,
                        "step_name": "Paper",
                        "instruction": "A square sheet",
                        "prompt": "a square sheet",
                    },
                    {
                        "step_number": 2,
                        "step_name": "Crane",
                        "instruction": "The crane",
                        "prompt": "fold it into a crane",
                    },
                ]
            }
        )
    )
    assert main(["--runs-dir", runs_dir, "resume", "r", "--plan-file", str(good)]) == EXIT_OK
    assert "run r finished" in capsys.readouterr().out
    assert main(["--runs-dir", runs_dir, "show", "r"]) == EXIT_OK
    assert "2/2 steps" in capsys.readouterr().out
    assert main(["--runs-dir", runs_dir, "resume", "r", "--approve-plan"]) == EXIT_OK  # finished: no-op


def test_a_given_plan_skips_the_planner_and_runs_as_the_planners_plan(paused, make_context, chat_server, runs_dir):
    """`start_run(plan=...)` (the benchmarks' bare generator) starts at the generator: the planner
    is never asked, and the run is the one the same plan from the planner gives."""
    with pytest.raises(ValueError, match="every step must be an image operation"):
        start_run(REQUEST, make_context(), run_id="bad", plan=[{"step_number": 1, "step_name": "x", "prompt": None}])
    assert not (Path(runs_dir) / "bad").exists()
    asked = len(chat_server.requests)
    seen = []
    given = start_run(
        REQUEST, make_context(), run_id="given", plan=paused.review["plan"], plan_reasoning="mine", on_event=seen.append
    )
    assert given.status == "finished", given.error
    kinds = [e["event"] for e in seen if e["event"] != "node_started"]
    # announced as a new run with its plan (the progress line "plan given: ..."), never as resumed
    assert kinds[0] == "plan_ready" and seen[0]["given"] is True and "run_resumed" not in kinds
    assert seen[0]["step_numbers"] == [s["step_number"] for s in paused.review["plan"]]
    assert {r["model"] for r in chat_server.requests[asked:]} == {"demo-critic"}
    assert record(given)["plan_reasoning"] == "mine"
    plain = start_run(REQUEST, make_context(), run_id="plain")
    strip = lambda doc: without_timings({k: v for k, v in doc.items() if k not in ("settings", "plan_reasoning")})
    assert strip(record(given)) == strip(record(plain))


def test_a_given_plan_longer_than_max_plan_steps_is_refused_before_anything_is_written(make_context, runs_dir):
    plan = [{"step_number": n, "step_name": f"s{n}", "prompt": f"a crane, stage {n}"} for n in (1, 2, 3)]
    with pytest.raises(ValueError, match="max_plan_steps=2") as error:
        start_run(REQUEST, make_context(max_plan_steps=2), run_id="long", plan=plan)
    assert str(error.value).startswith("the given plan has 3 steps")  # nothing was edited
    assert not (Path(runs_dir) / "long").exists()
