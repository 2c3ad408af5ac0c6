"""Planner node: the VLM writes the whole plan before any image exists (SPEC §2)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from graph.context import Context, context_of
from graph.state import State
from nodes import events
from nodes.prompts import PLANNER_SYSTEM, planner_user
from tools.chat import chat_model, complete, png_part, text_part
from tools.image_store import ImageStore
from tools.parsing import PlanParseError, check_narrative, parse_plan


class EmptyRequestError(ValueError):
    pass


def run_id_of(state: State) -> str:
    """The run id: given in the input, else the checkpoint thread id, else a fresh one."""
    if state.get("run_id"):
        return state["run_id"]
    try:
        thread = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # called outside a graph run
        thread = None
    return str(thread) if thread else uuid.uuid4().hex[:12]


def _save_failures(runs_dir: str, run_id: str, failures: list[dict]) -> Path:
    folder = Path(runs_dir) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"planner-failures-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(failures, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def plan(state: State, runtime: Runtime[Context]) -> dict:
    ctx = context_of(runtime)
    run_id = run_id_of(state)
    request = (state.get("request") or "").strip()
    if not request:
        raise EmptyRequestError("the request is empty; say what the sequence should show, "
                                "e.g. 'How do I fold a paper crane?'")
    store = ImageStore(ctx.runs_dir)
    input_images = [store.import_file(p) for p in state.get("images", [])]
    # From here on the inputs are files in the store: data URLs given as input do not ride along
    # in every later checkpoint.
    stored_inputs = [str(store.path(ref).resolve()) for ref in input_images]

    content = [text_part(planner_user(request))]
    content += [png_part(store.read_png(ref)) for ref in input_images]
    messages = [SystemMessage(PLANNER_SYSTEM), HumanMessage(content=content)]
    model = chat_model(ctx.planner_base_url, ctx.planner_api_key, ctx.planner_model,
                       ctx.vlm_max_tokens, ctx.vlm_temperature, ctx.vlm_timeout_s, ctx.vlm_retries)
    failures = []
    for _ in range(ctx.vlm_retries + 1):
        reply, finish = complete(model, messages, "planner")
        try:
            reasoning, steps = parse_plan(reply)
            check_narrative(steps)
            break
        except ValueError as exc:
            failures.append({"error": str(exc), "finish_reason": finish, "reply": reply})
    else:
        saved = _save_failures(ctx.runs_dir, run_id, failures)
        raise PlanParseError(
            f"the planner gave no usable plan in {len(failures)} tries (last: {failures[-1]['error']}). "
            f"Raw replies saved to {saved}. Check that the planner model follows the plan format, "
            f"then `interleave resume {run_id}`.", failures[-1]["reply"])

    events.emit(runtime, events.PLAN_READY, run_id, steps=len(steps),
                step_names=[s["step_name"] for s in steps])
    return {"run_id": run_id, "images": stored_inputs, "input_images": input_images, "plan": steps,
            "plan_reasoning": reasoning, "step_index": 0}
