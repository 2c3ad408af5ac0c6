"""Time travel: a run's checkpoints listed in order, and forks that redo a step of a run."""

import json
from pathlib import Path

import pytest

from conftest import REQUEST, without_timings
from graph.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from graph.runs.runner import start_run
from graph.runs.history import fork_run, run_history


@pytest.fixture
def parent(make_context):
    outcome = start_run(REQUEST, make_context(), run_id="parent")
    assert outcome.status == "finished", outcome.error
    return outcome


def record(outcome):
    return json.loads((Path(outcome.document_dir) / "document.json").read_text())


def test_history_lists_every_node_in_order(parent, runs_dir):
    rows = run_history(runs_dir, "parent")
    after = [r["after"] for r in rows]
    # input, plan, then per step generate/critique(/generate/critique)/accept, then compose
    assert after == [
        "(input)",
        "__start__",
        "plan",
        "review",
        "generate",
        "critique",
        "accept",
        "generate",
        "critique",
        "generate",
        "critique",
        "accept",
        "generate",
        "critique",
        "accept",
        "compose",
    ]
    assert rows[-1]["next"] == [] and rows[-1]["attempts"] == 4
    assert [r["last_verdict"] for r in rows if r["after"] == "critique"] == [True, False, True, True]


def test_fork_with_same_prompt_and_seed_reproduces_the_parent(parent, runs_dir, chat_server):
    chat_server.requests.clear()
    child = fork_run(runs_dir, "parent", 2, new_id="child")
    assert child.status == "finished", child.error
    assert not any(r["model"] == "demo-planner" for r in chat_server.requests)  # plan reused
    parent_doc, child_doc = record(parent), record(child)
    assert child_doc["forked_from"] == {"run_id": "parent", "step_number": 2, "prompt_changed": False}
    strip = lambda doc: without_timings({k: v for k, v in doc.items() if k != "forked_from"})
    assert strip(child_doc) == strip(parent_doc)
    html = (Path(child.document_dir) / "document.html").read_text()
    assert "Forked from run <b>parent</b> at step 2" in html and "branches here" in html


def test_fork_with_a_new_prompt_redoes_the_step_and_keeps_earlier_ones(parent, runs_dir):
    child = fork_run(runs_dir, "parent", 3, prompt="Show the crane with its wings spread", new_id="wings")
    assert child.status == "finished", child.error
    parent_steps, child_steps = record(parent)["steps"], record(child)["steps"]
    assert child_steps[:2] == parent_steps[:2]  # shared, same images
    assert child_steps[2]["prompt"] == "Show the crane with its wings spread"
    assert child_steps[2]["attempts"][0]["prompt"] == "Show the crane with its wings spread"
    assert child_steps[2]["attempts"][0]["source"] == parent_steps[1]["image"]
    assert child_steps[2]["image"] != parent_steps[2]["image"]


def test_fork_cli_and_its_errors(parent, runs_dir, capsys):
    assert main(["--runs-dir", runs_dir, "fork", "parent", "--at", "9"]) == EXIT_BAD_INPUT
    assert "outside run parent's plan (steps 1 to 3)" in capsys.readouterr().err
    assert main(["--runs-dir", runs_dir, "fork", "parent", "--at", "1", "--run-id", "again"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "forked parent at step 1 into again" in out
    assert main(["--runs-dir", runs_dir, "history", "again"]) == EXIT_OK
    assert "compose" in capsys.readouterr().out
    assert main(["--runs-dir", runs_dir, "list"]) == EXIT_OK
    assert "again" in capsys.readouterr().out
