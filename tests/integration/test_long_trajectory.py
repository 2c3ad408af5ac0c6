"""A 30-step trajectory (scripted planner) resumes correctly from any of its checkpoints.

The run is SIGKILLed at random points (a fixed seed, so the kill points are reproducible; set
LONG_TRAJECTORY_SEED to try others) in a loop, each time in a separate process, and resumed each
time in a new one: no completed node re-runs (only the node in flight at each kill may run
again), no accepted image is lost or duplicated, and the final document equals the one of an
uninterrupted run. Forks of the uninterrupted run at several steps reproduce it without a new plan.

Runtime: every child process costs a few seconds of imports (torch, diffusers); the kill loop
starts NUM_KILLS + 1 of them.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect, open_checkpointer
from conftest import without_timings
from graph.builder import build_graph
from graph.runs.demo import demo_context
from graph.runs.runner import resume_run, start_run
from graph.runs.history import fork_run
from nodes.prompts import read_critic_user
from tools.doubles import demo_script
from tools.store.images import ImageStore
from tools.doubles.scripted_chat import ScriptedChatServer, message_text

CHILD = Path(__file__).with_name("long_child.py")
STEPS = 30
REJECTED_STEPS = tuple(range(7, STEPS + 1, 7))  # first attempt rejected once: 7, 14, 21, 28
REQUEST = "Show how to build a wooden birdhouse in thirty steps"
# The default seed kills in plan, in a rejecting critique (step 7), in generate, in accept and in compose.
SEED = int(os.environ.get("LONG_TRAJECTORY_SEED", "75"))
NUM_KILLS = 5  # kill points per trajectory; the loop never kills more often than this
CHILD_TIMEOUT_S = 180
COUNTERS = ("steps_total", "steps_done", "generations", "critic_calls", "rejections")


# ----------------------------------------------------------------------------- scripted models


def long_plan() -> list[dict]:
    """Step 1 draws from text; steps 2..30 edit the image before; every prompt is distinct."""
    steps = [
        {
            "step_number": 1,
            "step_name": "Lay out the parts",
            "instruction": "Lay out the boards, nails and tools on the workbench.",
            "prompt": "A top-down photo of a workbench with pine boards, nails, a hammer and a saw; "
            "soft daylight, sharp focus, no text",
            "auxiliary_text": None,
        }
    ]
    for n in range(2, STEPS + 1):
        steps.append(
            {
                "step_number": n,
                "step_name": f"Stage {n}",
                "instruction": f"Carry out stage {n} of the build.",
                "prompt": f"Carry out build stage {n} of {STEPS} on the birdhouse; keep the "
                f"workbench, lighting and camera angle unchanged",
                "auxiliary_text": f"Stage {n}: check the joints before moving on." if n % 5 == 0 else None,
            }
        )
    return steps


REJECTED_PROMPTS = {
    s["prompt"]: f"{s['prompt']}, shown clearly in the centre of the frame"
    for s in long_plan()
    if s["step_number"] in REJECTED_STEPS
}


def respond(body: dict) -> str:
    """The planner returns the 30-step plan; the critic (demo_script's reply format) rejects the
    first attempt of every 7th step once, with a refined prompt, and passes everything else."""
    if body.get("model") == demo_script.CRITIC_MODEL:
        original, used = read_critic_user(message_text(body["messages"][-1]))
        if original in REJECTED_PROMPTS and used == original:
            verdict = {"previous_step_success": False, "refine_prompt": REJECTED_PROMPTS[original]}
            return f"<think>The stage is hard to see.</think><answer>{json.dumps(verdict)}</answer>"
        return demo_script.critic_reply(original, used)
    plan = {"execution_plan": long_plan()}
    return f"<think>{STEPS} image operations.</think><answer>{json.dumps(plan)}</answer>"


# ----------------------------------------------------------------------------- helpers


def event_key(event: dict) -> tuple:
    """What identifies an event within one trajectory (the same in a re-run of its node)."""
    return (event["event"], event.get("step_number"), event.get("attempt"), event.get("done"))


def document_of(document_dir: str) -> dict:
    return json.loads((Path(document_dir) / "document.json").read_text())


def comparable(document: dict) -> dict:
    """A document without timings, ids, where its runs folder is, and its fork origin."""
    document = without_timings(document)
    document.pop("forked_from", None)
    document["settings"] = {k: v for k, v in document["settings"].items() if k != "runs_dir"}
    return document


def registry_row(runs_dir, run_id) -> dict:
    with closing(connect(runs_dir)) as conn:
        return RunRegistry(conn).get(run_id)


def final_values(runs_dir, run_id) -> dict:
    with open_checkpointer(runs_dir) as saver:
        return build_graph(saver).get_state({"configurable": {"thread_id": run_id}}).values


def calls(server, model, since=0) -> int:
    return sum(r["model"] == model for r in server.requests[since:])


def stored_pngs(runs_dir) -> set[str]:
    root = Path(runs_dir)
    return {p.relative_to(root).as_posix() for p in (root / "images").rglob("*.png")}


class Child:
    """One child process; its events as they came, and whether it was SIGKILLed."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.events: list[dict] = []
        self.noise: list[str] = []  # stdout lines that are not events (should be none)
        self.kill_sent_at: dict | None = None
        self.returncode: int | None = None

    def run(self, kill_when=None) -> "Child":
        with open(self.log, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), *self.args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
            watchdog.start()
            try:
                for line in proc.stdout:
                    self._take(line)
                    event = self.events[-1] if self.events else None
                    if (
                        kill_when
                        and event
                        and self.kill_sent_at is None
                        and event["event"] != "child_done"
                        and kill_when(event)
                    ):
                        proc.send_signal(signal.SIGKILL)
                        self.kill_sent_at = event
                        break
                # Events printed between the kill point and the process's death happened too.
                for line in proc.stdout:
                    self._take(line)
                self.returncode = proc.wait()
            finally:
                watchdog.cancel()
        assert self.returncode is not None and self.returncode != -signal.SIGKILL or self.kill_sent_at, (
            f"child {self.args[0]} was killed by the watchdog after {CHILD_TIMEOUT_S} s"
        )
        return self

    def _take(self, line: str) -> None:
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] != "node_started":  # display notices: not positions of the trajectory
                self.events.append(event)
        elif line.strip():
            self.noise.append(line)

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def done(self) -> dict | None:
        return next((e for e in self.events if e["event"] == "child_done"), None)

    def describe(self) -> str:
        last = [event_key(e) for e in self.events[-2:]]
        stderr = self.log.read_text()[-2000:] if self.log.exists() else ""
        return (
            f"{self.args[0]}: rc={self.returncode} kill sent at "
            f"{self.kill_sent_at and event_key(self.kill_sent_at)}, {len(self.events)} events, last {last}"
            + (f"\n  stderr tail: {stderr}" if self.returncode not in (0, -signal.SIGKILL) else "")
        )


def pick_kill_points(events: list[dict], rng: random.Random) -> list[int]:
    """NUM_KILLS positions in the event sequence: a random occurrence of each of NUM_KILLS random
    distinct event kinds, so kills land in every node (plan, generate, critique, accept, compose),
    not mostly in the generator, whose denoising events are most of the stream."""
    by_kind: dict[str, list[int]] = {}
    for position, event in enumerate(events):
        by_kind.setdefault(event["event"], []).append(position)
    kinds = rng.sample(sorted(by_kind), min(NUM_KILLS, len(by_kind)))
    return sorted(rng.choice(by_kind[kind]) for kind in kinds)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def long_server():
    with ScriptedChatServer(respond) as server:
        yield server


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_pipeline, long_server):
    """The uninterrupted 30-step run: its document, events, model calls and registry row."""
    runs_dir = str(tmp_path_factory.mktemp("long-reference") / "runs")
    context = demo_context(runs_dir, long_server.base_url, tiny_pipeline, width=64, height=64, num_inference_steps=2)
    since = len(long_server.requests)
    events = []

    def record(event: dict) -> None:
        if event["event"] != "node_started":  # display notices: not positions of the trajectory
            events.append(event)

    outcome = start_run(REQUEST, context, run_id="reference", on_event=record)
    assert outcome.status == "finished", outcome.error
    document = document_of(outcome.document_dir)

    # The scripted trajectory is what this test claims it is.
    steps = document["steps"]
    assert [s["step_number"] for s in steps] == list(range(1, STEPS + 1))
    assert len({s["prompt"] for s in steps}) == STEPS
    assert [len(s["attempts"]) for s in steps] == [2 if n in REJECTED_STEPS else 1 for n in range(1, STEPS + 1)]
    assert steps[0]["attempts"][0]["source"] is None and all(s["attempts"][0]["source"] for s in steps[1:])
    assert calls(long_server, demo_script.PLANNER_MODEL, since) == 1

    return {
        "runs_dir": runs_dir,
        "context": context,
        "document": document,
        "events": events,
        "critic_calls": calls(long_server, demo_script.CRITIC_MODEL, since),
        "row": registry_row(runs_dir, "reference"),
        "images": {a["image"]["path"] for s in steps for a in s["attempts"]},
    }


# ----------------------------------------------------------------------------- tests


def test_killed_at_random_points_and_resumed_each_time_equals_the_uninterrupted_run(reference, long_server, tmp_path):
    runs_dir = str(tmp_path / "runs")
    context = demo_context(
        runs_dir, long_server.base_url, reference["context"].generator_model, width=64, height=64, num_inference_steps=2
    )
    order = {event_key(e): i for i, e in enumerate(reference["events"])}
    assert len(order) == len(reference["events"]), "event keys must be unique within a trajectory"
    # Kill points are positions in the reference trajectory's event sequence, strictly increasing,
    # so every child gets further than the one before and the loop ends.
    kill_points = pick_kill_points(reference["events"], random.Random(SEED))
    since = len(long_server.requests)

    children: list[Child] = []

    def story() -> str:
        return (
            f"seed {SEED} (LONG_TRAJECTORY_SEED), kill points {kill_points} = "
            f"{[event_key(reference['events'][p]) for p in kill_points]}\n"
            + "\n".join(f"  child {i}: {c.describe()}" for i, c in enumerate(children))
        )

    start_args = ["start", json.dumps(context.to_record()), REQUEST, "long"]
    resume_args = ["resume", runs_dir, "long"]
    for point in kill_points:
        child = Child(resume_args if children else start_args, tmp_path / f"child-{len(children)}.log")
        children.append(child.run(kill_when=lambda e, p=point: order.get(event_key(e), -1) >= p))
        assert child.killed or child.done, story()
        if child.done:  # the kill point came after the end of the run (or the kill arrived too late)
            assert child.done["status"] == "finished", story()
            break
        # (A kill sent at run_finished may arrive after the run was marked finished.)
        assert registry_row(runs_dir, "long")["status"] == "interrupted" or (
            child.kill_sent_at["event"] == "run_finished"
        ), story()
    if not (children and children[-1].done):
        final = Child(resume_args, tmp_path / f"child-{len(children)}.log")
        children.append(final.run())
        assert final.done and final.done["status"] == "finished", story()
    assert not any(c.noise for c in children), [c.noise for c in children]

    kills = sum(c.killed for c in children)
    events = [e for c in children for e in c.events if e["event"] != "child_done"]
    row = registry_row(runs_dir, "long")
    values = final_values(runs_dir, "long")

    # The final document equals the uninterrupted one (same seeds: same images, same verdicts).
    document = document_of(values["document_dir"])
    assert comparable(document) == comparable(reference["document"]), story()

    # Only the node in flight at each kill may have run again; every completed node ran once.
    planner_calls = calls(long_server, demo_script.PLANNER_MODEL, since)
    killed_in_plan = any(c.killed and c.kill_sent_at["event"] == "plan_ready" for c in children)
    assert planner_calls == 1 or (planner_calls == 2 and killed_in_plan), (planner_calls, story())
    started = [(e["step_number"], e["attempt"]) for e in events if e["event"] == "attempt_started"]
    accepted = [e["step_number"] for e in events if e["event"] == "step_accepted"]
    finished = [e for e in events if e["event"] == "run_finished"]
    reruns = {
        "plan": planner_calls - 1,
        "generate": len(started) - len(set(started)),
        "critique": calls(long_server, demo_script.CRITIC_MODEL, since) - reference["critic_calls"],
        "accept": len(accepted) - STEPS,
        "compose": len(finished) - 1,
    }
    assert min(reruns.values()) >= 0 and sum(reruns.values()) <= kills, (reruns, kills, story())
    reference_attempts = {
        (a["step_number"], a["attempt"]) for s in reference["document"]["steps"] for a in s["attempts"]
    }
    assert set(started) == reference_attempts, story()

    # Every step accepted, none twice in the state; duplicated events only from re-run accepts.
    assert sorted(set(accepted)) == list(range(1, STEPS + 1)), story()
    assert [a["step_number"] for a in values["accepted"]] == list(range(1, STEPS + 1))
    assert values["accepted"] == [
        {"step_number": s["step_number"], "attempt": s["attempts"][-1]["attempt"], "image": s["image"]}
        for s in reference["document"]["steps"]
    ]

    # Each accepted image is in this run's store (sha256 checked on load), and the store holds
    # exactly the images of the reference trajectory: a re-run generation lands on the same file.
    store = ImageStore(runs_dir)
    for entry in values["accepted"]:
        assert store.load(entry["image"]).size == (64, 64)
    assert stored_pngs(runs_dir) == reference["images"], story()

    # The registry's counters are exact despite re-run nodes.
    assert {k: row[k] for k in COUNTERS} == {k: reference["row"][k] for k in COUNTERS}, story()
    assert row["steps_done"] == STEPS

    # The registry says finished, also when the last kill landed after compose's checkpoint.
    assert (row["status"], row["document_dir"]) == ("finished", values["document_dir"]), story()
    print(f"{kills} kills, re-runs {reruns}\n{story()}")  # shown with pytest -rP


@pytest.mark.parametrize("at_step", [1, 15, STEPS])
def test_fork_at_any_step_reproduces_the_uninterrupted_run(reference, long_server, at_step):
    since = len(long_server.requests)
    events = []
    outcome = fork_run(reference["runs_dir"], "reference", at_step, new_id=f"fork-{at_step}", on_event=events.append)
    assert outcome.status == "finished", outcome.error
    document = document_of(outcome.document_dir)
    assert document["forked_from"] == {"run_id": "reference", "step_number": at_step, "prompt_changed": False}
    assert comparable(document) == comparable(reference["document"])
    assert calls(long_server, demo_script.PLANNER_MODEL, since) == 0  # the plan is reused
    # Steps before the fork point are not generated again; the rest are, once each.
    generated = sorted({e["step_number"] for e in events if e["event"] == "attempt_started"})
    assert generated == list(range(at_step, STEPS + 1))
    row = registry_row(reference["runs_dir"], f"fork-{at_step}")
    assert {k: row[k] for k in COUNTERS} == {k: reference["row"][k] for k in COUNTERS}
    assert row["parent_run_id"] == "reference" and row["forked_at_step"] == at_step


def test_resume_after_a_kill_between_the_last_checkpoint_and_the_registry_update(reference):
    """The state a SIGKILL leaves when it lands after compose's checkpoint was written but before
    drive() marked the run finished (the kill loop reaches it with a kill at run_finished):
    the checkpoint holds the document, the registry row still says running, for a dead process."""
    runs_dir = reference["runs_dir"]
    outcome = fork_run(runs_dir, "reference", STEPS, new_id="killed-after-compose")
    assert outcome.status == "finished", outcome.error
    with closing(connect(runs_dir)) as conn:
        RunRegistry(conn).update("killed-after-compose", status="running", document_dir=None, pid=None)
    assert registry_row(runs_dir, "killed-after-compose")["status"] == "interrupted"

    resumed = resume_run("killed-after-compose", runs_dir)
    assert resumed.status == "finished" and resumed.document_dir == outcome.document_dir
    row = registry_row(runs_dir, "killed-after-compose")
    assert (row["status"], row["document_dir"]) == ("finished", outcome.document_dir)
