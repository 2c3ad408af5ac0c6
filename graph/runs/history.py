"""History and forks of runs: see every checkpoint of a run, and start a new run from any step.

A fork copies the parent's state as it stood when step N was about to be generated (the plan,
and every attempt and accepted image of steps before N) into a new run, optionally with a new
prompt for step N, and continues from there. Images are shared through the content-addressed
store, so a fork costs no copies. With the same seed and prompt a fork reproduces its parent.
"""

from __future__ import annotations

import copy
from contextlib import closing
from typing import Any

from checkpoints.registry import RunRegistry
from checkpoints.run_ids import check_run_id
from checkpoints.saver import connect, open_checkpointer
from graph.builder import build_graph
from graph.context import Context
from graph.runs.runner import EventHandler, RunOutcome, check_local, drive, new_run_id


def run_history(runs_dir: str, run_id: str) -> list[dict[str, Any]]:
    """Every checkpoint of a run, oldest first, with the node that produced it."""
    with closing(connect(runs_dir, create=False)) as conn:
        RunRegistry(conn).get(run_id)  # a clear error for an unknown id
    with open_checkpointer(runs_dir) as saver:
        snapshots = list(build_graph(saver).get_state_history({"configurable": {"thread_id": run_id}}))
    rows, produced_by = [], "(input)"
    for index, snap in enumerate(reversed(snapshots)):
        values = snap.values
        attempts = values.get("attempts", [])
        last = attempts[-1] if attempts else None
        verdict = last["verdict"] if last else None
        rows.append(
            {
                "index": index,
                "checkpoint_id": snap.config["configurable"]["checkpoint_id"],
                "created_at": snap.created_at,
                "after": produced_by,
                "next": list(snap.next),
                "step": values.get("step_index", 0) + 1 if values.get("plan") else None,
                "steps_total": len(values.get("plan", [])),
                "attempts": len(attempts),
                "last_attempt": f"{last['step_number']}.{last['attempt']}" if last else None,
                "last_verdict": None if verdict is None else verdict["success"],
            }
        )
        produced_by = ",".join(snap.next) or "-"
    return rows


def fork_state(values: dict[str, Any], at_step: int, prompt: str | None, new_id: str, parent_id: str) -> dict[str, Any]:
    """The parent's state as it stood just before step ``at_step`` was first generated."""
    plan = copy.deepcopy(values.get("plan") or [])
    if not plan:
        raise ValueError(
            f"run {parent_id} has no plan yet, so there is nothing to fork; `interleave resume {parent_id}` first"
        )
    if not 1 <= at_step <= len(plan):
        raise ValueError(f"--at {at_step} is outside run {parent_id}'s plan (steps 1 to {len(plan)})")
    accepted = [a for a in values.get("accepted", []) if a["step_number"] < at_step]
    if len(accepted) < at_step - 1:
        raise ValueError(
            f"run {parent_id} has accepted only {len(accepted)} steps; fork at step "
            f"{len(accepted) + 1} or earlier, or resume it first"
        )
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("--prompt is empty; give the new prompt for the step or leave it out")
        plan[at_step - 1]["prompt"] = prompt.strip()
    return {
        "request": values["request"],
        "images": values.get("images", []),
        "run_id": new_id,
        "input_images": values.get("input_images", []),
        "plan": plan,
        "plan_reasoning": values.get("plan_reasoning", ""),
        "step_index": at_step - 1,
        "attempts": [a for a in values.get("attempts", []) if a["step_number"] < at_step],
        "accepted": accepted,
        "forked_from": {"run_id": parent_id, "step_number": at_step, "prompt_changed": prompt is not None},
    }


def fork_run(
    runs_dir: str,
    run_id: str,
    at_step: int,
    *,
    prompt: str | None = None,
    overrides: dict[str, Any] | None = None,
    new_id: str | None = None,
    on_event: EventHandler | None = None,
) -> RunOutcome:
    with closing(connect(runs_dir, create=False)) as conn:
        record = RunRegistry(conn).get(run_id)
    check_local(record)
    context = Context.from_record(record["settings"], runs_dir=runs_dir, **(overrides or {}))
    new_id = new_run_id() if new_id is None else check_run_id(new_id)
    with open_checkpointer(runs_dir) as saver:
        parent = build_graph(saver).get_state({"configurable": {"thread_id": run_id}}).values
    values = fork_state(parent, at_step, prompt, new_id, run_id)  # validates before writing
    with closing(connect(runs_dir)) as conn:
        registry = RunRegistry(conn)
        registry.create(new_id, record["request"], record["images"], context.to_record())
        registry.update(
            new_id,
            parent_run_id=run_id,
            forked_at_step=at_step,
            steps_total=len(values["plan"]),
            steps_done=at_step - 1,
        )
    with open_checkpointer(runs_dir) as saver:
        # Written as if "accept" had just finished step at_step - 1: the router then generates step at_step.
        build_graph(saver).update_state({"configurable": {"thread_id": new_id}}, values, as_node="accept")
    return drive(new_id, None, context, on_event)
