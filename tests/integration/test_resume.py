"""Resuming interrupted runs: after an exception in the generator, after SIGKILL of the process,
after the critic endpoint died. Completed nodes are not re-run and the final document equals the
one of an uninterrupted run with the same seeds."""

import json
import os
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
from conftest import REQUEST, without_timings
from graph.runs.runner import resume_run, start_run
from tools.doubles import demo_script
from tools.generator import diffusion
from tools.doubles.scripted_chat import ScriptedChatServer

CHILD = Path(__file__).with_name("child_run.py")


def document(outcome):
    return without_timings(json.loads((Path(outcome.document_dir) / "document.json").read_text()))


def requests_by_model(server, model):
    return [r for r in server.requests if r["model"] == model]


@pytest.fixture
def reference(make_context, chat_server):
    """The uninterrupted run, and how many planner/critic calls it made."""
    outcome = start_run(REQUEST, make_context(), run_id="reference")
    assert outcome.status == "finished", outcome.error
    counts = {m: len(requests_by_model(chat_server, m)) for m in (demo_script.PLANNER_MODEL, demo_script.CRITIC_MODEL)}
    chat_server.requests.clear()
    return document(outcome), counts


def status_of(runs_dir, run_id):
    with closing(connect(runs_dir)) as conn:
        return RunRegistry(conn).get(run_id)


def test_resume_after_generator_exception(make_context, chat_server, reference, runs_dir):
    expected, counts = reference
    context = make_context()
    pipe = diffusion.load_pipeline(context.generator_model, context.device, context.dtype)
    forwards = {"n": 0}

    def fail_on_step_two(module, args, kwargs):  # the 3rd transformer call is step 2, attempt 1
        forwards["n"] += 1
        if forwards["n"] == 3:
            raise RuntimeError("simulated CUDA out of memory")

    hook = pipe.transformer.register_forward_pre_hook(fail_on_step_two, with_kwargs=True)
    try:
        failed = start_run(REQUEST, context, run_id="crashy")
    finally:
        hook.remove()
    assert failed.status == "failed" and "simulated CUDA out of memory" in str(failed.error)
    row = status_of(runs_dir, "crashy")
    assert row["status"] == "failed" and "out of memory" in row["error"] and row["steps_done"] == 1

    events = []
    resumed = resume_run("crashy", runs_dir, on_event=events.append)
    assert resumed.status == "finished", resumed.error
    assert document(resumed) == expected
    # Nothing completed before the crash ran again: no new plan, step 1 not regenerated.
    assert len(requests_by_model(chat_server, demo_script.PLANNER_MODEL)) == 1
    assert not any(e.get("step_number") == 1 for e in events)
    assert status_of(runs_dir, "crashy")["status"] == "finished"


@pytest.mark.parametrize(
    "kill_after",
    [
        ("plan_ready", 1),  # during step 1's first generation
        ("verdict", 2),  # right after step 2's first attempt was rejected
        ("step_accepted", 2),
    ],
)
def test_resume_after_sigkill(make_context, chat_server, reference, runs_dir, kill_after):
    expected, counts = reference
    event_name, occurrence = kill_after
    context = make_context()
    child = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(context.to_record()), REQUEST, "killed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen_before_kill = []
    for line in child.stdout:
        event = json.loads(line)
        seen_before_kill.append(event)
        if sum(e["event"] == event_name for e in seen_before_kill) == occurrence:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert status_of(runs_dir, "killed")["status"] == "interrupted"

    events = []
    resumed = resume_run("killed", runs_dir, on_event=events.append)
    assert resumed.status == "finished", resumed.error
    assert resumed.document_dir, (seen_before_kill[-3:], events)
    assert document(resumed) == expected

    # Only the node in flight at the kill may run twice; every completed node ran once.
    # (Events are emitted inside nodes, so the kill can land before or after that node's checkpoint.)
    both = seen_before_kill + events
    planner_reruns = len(requests_by_model(chat_server, demo_script.PLANNER_MODEL)) - 1
    critic_reruns = len(requests_by_model(chat_server, demo_script.CRITIC_MODEL)) - counts[demo_script.CRITIC_MODEL]
    generated = [(e["step_number"], e["attempt"]) for e in both if e["event"] == "image_ready"]
    accepted = [e["step_number"] for e in both if e["event"] == "step_accepted"]
    reruns = (planner_reruns, critic_reruns, len(generated) - len(set(generated)), len(accepted) - 3)
    assert min(reruns) >= 0 and sum(reruns) <= 1, reruns
    assert sorted(set(accepted)) == [1, 2, 3]
    # The registry's counters are exact despite the re-run node.
    keys = ("steps_total", "steps_done", "generations", "critic_calls", "rejections")
    assert {k: status_of(runs_dir, "killed")[k] for k in keys} == {k: status_of(runs_dir, "reference")[k] for k in keys}


def test_endpoint_dying_mid_run_leaves_the_run_resumable(runs_dir, tiny_pipeline, reference):
    expected, _ = reference
    from graph.runs.demo import demo_context

    server = ScriptedChatServer(demo_script.respond).start()

    def stop_server_once_planned(event):
        if event["event"] == "plan_ready":
            server.stop()  # the critic endpoint goes away before the first verdict

    context = demo_context(runs_dir, server.base_url, tiny_pipeline, vlm_retries=0)
    failed = start_run(REQUEST, context, run_id="orphan", on_event=stop_server_once_planned)
    assert failed.status == "failed"
    assert "critic endpoint" in str(failed.error) and "refused the connection" in str(failed.error)
    # The library does not promise `interleave resume`: an embedded run may keep no registry.
    # The CLI says it (test_cli: "interleave resume broken").
    assert "interleave resume" not in str(failed.error)

    with ScriptedChatServer(demo_script.respond) as replacement:  # the server is back, elsewhere
        resumed = resume_run(
            "orphan",
            runs_dir,
            overrides={"critic_base_url": replacement.base_url, "planner_base_url": replacement.base_url},
        )
    assert resumed.status == "finished", resumed.error
    resumed_document = document(resumed)
    # Only the endpoint URLs in the recorded settings differ (the server moved).
    assert resumed_document.pop("settings")["critic_base_url"] == replacement.base_url
    assert resumed_document == {k: v for k, v in expected.items() if k != "settings"}
