"""Planner node: the VLM writes the whole plan before any image exists (SPEC §2)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from checkpoints.run_ids import check_run_id, run_folder
from graph.context import Context, context_of
from graph.state import ImageRef, PlanStep, State
from nodes import events
from nodes.guidance import check_plan, request_segments
from nodes.prompts import planner_system, planner_user
from nodes.adapters import ask, learnt_update, model_for
from tools.llm.chat import ChatModels, text_part
from tools.store.images import DATA_URL_PREFIX, ImageStore
from tools.replies.parsing import PlanParseError, parse_plan
from tools.llm.images import MessageImages


class EmptyRequestError(ValueError):
    pass


def run_id_of(state: State) -> str:
    """The run id: given in the input, else the checkpoint thread id, else a fresh one; a run id
    names a folder of the runs directory, so it must be a valid one (``checkpoints.run_ids``)."""
    if state.get("run_id"):
        return check_run_id(state["run_id"])
    try:
        thread = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # called outside a graph run
        thread = None
    return check_run_id(str(thread)) if thread else uuid.uuid4().hex[:12]


def _save_failures(runs_dir: str, run_id: str, failures: list[dict]) -> Path:
    folder = run_folder(runs_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"planner-failures-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(failures, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def import_inputs(images: list[str], store: ImageStore) -> tuple[list[ImageRef], list[str]]:
    """The user's images as store references, and as the stored files' paths: from here on the
    inputs are files in the store, so data URLs given as input do not ride along in every later
    checkpoint."""
    refs = [store.import_file(p) for p in images]
    return refs, [str(store.path(ref).resolve()) for ref in refs]


def planner_messages(request: str, inputs: list[ImageRef], ctx: Context, store: ImageStore) -> list[BaseMessage]:
    """System + user message; in guidance mode the user's images sit where ``<image>`` stood."""
    images = MessageImages(
        store, transport=ctx.vlm_image_transport, max_pixels=ctx.vlm_image_max_pixels, image_count=len(inputs)
    )
    content = []
    for piece in request_segments(planner_user(request), len(inputs)):
        content.append(text_part(piece) if isinstance(piece, str) else images.part(inputs[piece]))
    return [SystemMessage(planner_system(guidance=bool(inputs))), HumanMessage(content=content)]


def plan(state: State, runtime: Runtime[Context], models: ChatModels | None = None, remote: bool = False) -> dict:
    ctx = context_of(runtime)
    run_id = run_id_of(state)
    request = (state.get("request") or "").strip()
    if not request:
        raise EmptyRequestError(
            "the request is empty; say what the sequence should show, e.g. 'How do I fold a paper crane?'"
        )
    store = ImageStore(ctx.runs_dir)
    if remote:  # a server's caller must not make it read (and send on) files of the server's disk
        local = [p for p in state.get("images", []) if not str(p).startswith(DATA_URL_PREFIX)]
        if local:
            raise ValueError(
                f"input images from a remote caller must be data URLs "
                f"(data:image/png;base64,...); {len(local)} were file paths"
            )
    input_images, stored_inputs = import_inputs(state.get("images", []), store)
    messages = planner_messages(request, input_images, ctx, store)

    def parse(reply: str) -> tuple[str, list[PlanStep], str]:
        reasoning, steps = parse_plan(reply)
        if len(steps) > ctx.max_plan_steps:
            raise PlanParseError(
                f"the plan has {len(steps)} steps, over max_plan_steps={ctx.max_plan_steps}", reply, reason="schema"
            )
        return reasoning, steps, check_plan(steps, len(input_images))

    model = model_for("planner", ctx, models)
    learnt = state.get("structured_output")
    answer, structured = ask(
        model,
        messages,
        "planner",
        parse,
        ctx,
        kind="plan",
        learnt=learnt,
        on_retry=lambda retry: events.emit(runtime, events.REPLY_RETRY, run_id, **retry),
    )
    if answer.value is None:
        saved = _save_failures(ctx.runs_dir, run_id, answer.failures)
        raise PlanParseError(
            f"the planner gave no usable plan in {len(answer.failures)} tries (last: "
            f"{answer.failures[-1]['error']}). Raw replies saved to {saved}. Check that the planner "
            f"model follows the plan format, then resume the run ({run_id}).",
            answer.reply,
            reason=answer.failures[-1]["reason"],
        )
    reasoning, steps, mode = answer.value
    events.emit(
        runtime,
        events.PLAN_READY,
        run_id,
        mode=mode,
        structured_output=structured,
        **events.plan_fields(steps),
    )
    return {
        "run_id": run_id,
        "images": stored_inputs,
        "input_images": input_images,
        "plan": steps,
        "plan_reasoning": reasoning,
        "plan_mode": mode,
        "step_index": 0,
        **learnt_update(ctx, model, "planner", structured, learnt),
    }
