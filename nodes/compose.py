"""Accepting a step's image, and composing the final document once every step is accepted."""

from __future__ import annotations

from pathlib import Path

from langgraph.runtime import Runtime

from checkpoints.run_ids import run_folder
from graph.context import Context, context_of
from graph.state import AcceptedStep, DocumentEntry, State, attempts_for, current_step
from nodes import events
from nodes.prompts import PROMPT_VERSION
from tools.store import documents


def accept(state: State, runtime: Runtime[Context]) -> dict:
    """The newest attempt of the current step becomes the step's image and the next step's source.
    A guidance step that answers about a given image (no prompt) takes that image (attempt 0)."""
    step = current_step(state)
    number = step["step_number"]
    if step["prompt"]:
        latest = attempts_for(state, number)[-1]
        accepted = AcceptedStep(step_number=number, attempt=latest["attempt"], image=latest["image"])
    else:
        accepted = AcceptedStep(step_number=number, attempt=0, image=state["input_images"][number - 1])
    events.emit(
        runtime,
        events.STEP_ACCEPTED,
        state["run_id"],
        step_number=number,
        attempt=accepted["attempt"],
        image=accepted["image"],
        steps_total=len(state["plan"]),
    )
    return {"accepted": [accepted], "step_index": state["step_index"] + 1}


def step_text(step: dict) -> str:
    """Text shown with a step: the auxiliary text if the plan has one, else the instruction."""
    return step["auxiliary_text"] or step["instruction"] or step["step_name"]


def compose(state: State, runtime: Runtime[Context]) -> dict:
    ctx = context_of(runtime)
    images = {a["step_number"]: a["image"] for a in state.get("accepted", [])}
    planned = {s["step_number"] for s in state["plan"]}
    # Given images the plan does not answer about open the document (a continued sequence).
    given = [
        DocumentEntry(step_number=k, step_name=f"Given image {k}", text="", image=ref)
        for k, ref in enumerate(state.get("input_images", []), start=1)
        if k not in planned
    ]
    entries = given + [
        DocumentEntry(
            step_number=s["step_number"],
            step_name=s["step_name"],
            text=step_text(s),
            image=images.get(s["step_number"]),
        )
        for s in state["plan"]
    ]
    record = documents.build_record(
        run_id=state["run_id"],
        request=state["request"],
        input_images=state.get("input_images", []),
        plan=state["plan"],
        plan_reasoning=state.get("plan_reasoning", ""),
        entries=entries,
        attempts=state.get("attempts", []),
        settings=ctx.to_record(),
        prompt_version=PROMPT_VERSION,
        forked_from=state.get("forked_from"),
        plan_mode=state.get("plan_mode", "narrative"),
        structured_output=state.get("structured_output"),
    )
    folder = run_folder(ctx.runs_dir, state["run_id"])  # checked here too: the state may be stored
    documents.write_all(folder, record, runs_dir=Path(ctx.runs_dir))
    events.emit(runtime, events.RUN_FINISHED, state["run_id"], document_dir=str(folder), steps_total=len(entries))
    return {"document": entries, "document_dir": str(folder)}
