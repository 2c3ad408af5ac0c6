"""Start and resume checkpointed runs: the layer the CLI, the demo and batch jobs share.

A run is one LangGraph thread (thread id = run id) in the runs directory's SQLite database, plus
a registry row. Every node's result is checkpointed before the next node starts
(``durability="sync"``), so a run killed at any point continues from its last completed node.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.types import Command

from graph.builder import build_graph
from graph.context import Context
from checkpoints.registry import RunRegistry, counters
from checkpoints.run_ids import check_run_id
from checkpoints.saver import connect, open_checkpointer
from nodes import events
from nodes.generator import check_generator_settings
from nodes.guidance import check_plan, request_segments
from nodes.planner import import_inputs
from nodes.review import reviewed_plan
from tools.logs import redact
from tools.llm.chat import ChatModels
from tools.replies.contracts import PlanStep
from tools.store.images import DATA_URL_PREFIX, ImageStore, load_input_image

MAX_REQUEST_CHARS = 20_000  # a long how-to request is ~1k; the planner prompt must fit the model
EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "finished", "failed" or "awaiting_review"
    document_dir: str | None = None
    error: BaseException | None = None
    review: dict[str, Any] | None = None  # what the paused run asks about (the plan)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def validate_request(request: str, images: list[str]) -> str:
    """Check the user's input before anything is written; return the cleaned request."""
    if request is not None and not isinstance(request, str):
        raise ValueError(f"the request is text, not {type(request).__name__} ({request!r:.60})")
    if isinstance(images, (str, bytes)) or not all(isinstance(p, str) for p in images):
        raise ValueError(f'images is a list of paths or data URLs, e.g. images=["a.png"], not {type(images).__name__}')
    request = (request or "").strip()
    if len(request) > MAX_REQUEST_CHARS:
        raise ValueError(f"the request is {len(request)} characters long; at most {MAX_REQUEST_CHARS} are accepted")
    control = sorted({f"\\x{ord(c):02x}" for c in request if ord(c) < 32 and c not in "\n\t"})
    if control:
        raise ValueError(f"the request holds control characters ({', '.join(control)}); remove them")
    if not request:
        raise ValueError(
            "the request is empty; say what the sequence should show, "
            'e.g. interleave run "How do I fold a paper crane?"'
        )
    request_segments(request, len(images))  # <image> markers must match the images given
    for path in images:
        load_input_image(path)  # raises ImageInputError naming the file and the fix
    return request


def start_run(
    request: str,
    context: Context,
    *,
    images: list[str] | None = None,
    run_id: str | None = None,
    preflight: bool = False,
    on_event: EventHandler | None = None,
    models: ChatModels | None = None,
    plan: list[dict[str, Any]] | None = None,
    plan_reasoning: str = "",
) -> RunOutcome:
    """Validate the input, register the run and drive it to its end (or first failure/pause).

    With ``plan`` (steps as in the planner's ``execution_plan``) no planner is asked: the run
    starts from a checkpoint written as if the planner had given these steps (checked by the
    same rules), so the graph goes on to review (a no-op unless ``review_plan``) and the generator.

    Nothing is written when the input is bad, the run id is taken, or (with ``preflight``) a model
    endpoint does not answer.
    """
    if isinstance(images, (str, bytes)):
        validate_request(request, images)  # says images is a list
    images = [str(p) if isinstance(p, Path) else p for p in images or []]
    request = validate_request(request, images)
    if plan is not None:
        # ValueError naming what is wrong, the run's max_plan_steps cap included
        plan = reviewed_plan({"plan": plan}, len(images), context.max_plan_steps, what="the given plan")
    check_generator_settings(context)  # an unknown model or a size it cannot make: ValueError
    run_id = new_run_id() if run_id is None else check_run_id(run_id)
    if preflight:
        from graph.runs.preflight import check_endpoints  # imports openai: only when asked for

        check_endpoints(context)
    with closing(connect(context.runs_dir)) as conn:
        registry = RunRegistry(conn)
        registry.ensure_new(run_id)
        store = ImageStore(context.runs_dir)  # data URLs become files: no state or row holds pixels
        images = [
            str(store.path(store.import_file(p)).resolve()) if p.startswith(DATA_URL_PREFIX) else p for p in images
        ]
        if plan is not None:  # the checkpoint first: a registered run is never without its plan
            _seed_plan(run_id, request, images, plan, plan_reasoning, context)
        registry.create(run_id, request, images, context.to_record())
    if plan is None:
        return drive(run_id, {"request": request, "images": images, "run_id": run_id}, context, on_event, models)
    if on_event is not None:  # a new run with its plan, not a resumed one ("resuming: 0/N")
        on_event(
            {
                "event": events.PLAN_READY,
                "run_id": run_id,
                "given": True,
                "mode": check_plan(plan, len(images)),
                **events.plan_fields(plan),
            }
        )
    return drive(run_id, None, context, on_event, models, announce=False)


def _seed_plan(
    run_id: str, request: str, images: list[str], plan: list[PlanStep], reasoning: str, context: Context
) -> None:
    """Write the run's first checkpoint as the planner node would have written it."""
    input_images, stored = import_inputs(images, ImageStore(context.runs_dir))
    values = {
        "request": request,
        "run_id": run_id,
        "images": stored,
        "input_images": input_images,
        "plan": plan,
        "plan_reasoning": reasoning,
        "plan_mode": check_plan(plan, len(images)),
        "step_index": 0,
    }
    with open_checkpointer(context.runs_dir) as saver:
        build_graph(saver).update_state({"configurable": {"thread_id": run_id}}, values, as_node="plan")


def resume_run(
    run_id: str,
    runs_dir: str,
    *,
    overrides: dict[str, Any] | None = None,
    review: Any = None,
    on_event: EventHandler | None = None,
    models: ChatModels | None = None,
) -> RunOutcome:
    """Continue a run from its last checkpoint with its stored settings (``overrides`` may change
    endpoints or devices, e.g. when the old server moved). A run paused for plan review continues
    only with a ``review`` answer (``{"approve": True}`` or ``{"plan": [...]}``)."""
    with closing(connect(runs_dir, create=False)) as conn:
        record = RunRegistry(conn).get(run_id)
    check_local(record)
    context = Context.from_record(record["settings"], runs_dir=runs_dir, **(overrides or {}))
    if review is not None:  # a bad edit is refused before anything changes
        reviewed_plan(review, len(record["images"]), context.max_plan_steps)
    if overrides:  # remember where the models are now, for the next resume too
        with closing(connect(runs_dir)) as conn:
            RunRegistry(conn).update(run_id, settings=json.dumps(context.to_record()))
    with open_checkpointer(runs_dir) as saver:
        snapshot = build_graph(saver).get_state({"configurable": {"thread_id": run_id}})
    # Finished means the document was composed. An empty ``snapshot.next`` is not enough: when a
    # process dies after a node's writes were saved but before the checkpoint that follows them,
    # ``next`` is empty too, and streaming from the checkpoint applies those writes and goes on.
    if snapshot.values.get("document_dir"):
        # It may have been killed after its last checkpoint but before the registry heard of it.
        with closing(connect(runs_dir)) as conn:
            RunRegistry(conn).update(
                run_id,
                status="finished",
                error=None,
                document_dir=snapshot.values["document_dir"],
                **counters(snapshot.values),
            )
        return RunOutcome(run_id, "finished", snapshot.values["document_dir"])
    if snapshot.interrupts and review is None:
        return RunOutcome(run_id, "awaiting_review", review=snapshot.interrupts[0].value)
    if review is not None:
        if not snapshot.interrupts:
            raise ValueError(
                f"run {run_id} is not waiting for a plan review; resume it without --approve-plan/--plan-file"
            )
        return drive(run_id, Command(resume=review), context, on_event, models)
    # No checkpoint at all means it died before the first one: start it again from its input.
    graph_input = (
        None if snapshot.values else {"request": record["request"], "images": record["images"], "run_id": run_id}
    )
    return drive(run_id, graph_input, context, on_event, models)


def check_local(record: dict[str, Any]) -> None:
    """Refuse a run made through a LangGraph server: its checkpoints are the server's, so here it
    could only start over (and overwrite its document)."""
    if record.get("origin") == "server":
        raise ValueError(
            f"run {record['run_id']} was made through the LangGraph server, which keeps "
            f"its checkpoints; continue it there (LangGraph Studio, or the SDK on "
            f"thread {record['run_id']}), or start a new run here with `interleave run`"
        )


def _node_started(task: dict[str, Any], context: Context) -> dict[str, Any]:
    """``events.NODE_STARTED`` for a starting task: a display can say what it waits for."""
    values = task.get("input") if isinstance(task.get("input"), dict) else {}
    plan, index = values.get("plan") or [], values.get("step_index") or 0
    step = plan[index]["step_number"] if index < len(plan) else None
    model = context.planner_model if task["name"] == "plan" else context.critic_model
    return {
        "event": events.NODE_STARTED,
        "run_id": values.get("run_id"),
        "node": task["name"],
        "step_number": step,
        "model": model,
    }


def _announce_resume(graph: Any, config: dict, on_event: EventHandler) -> None:
    """``events.RUN_RESUMED`` when a run continues from a checkpoint that has a plan, so that
    its progress shows step i/N as a new run's does."""
    values = graph.get_state(config).values
    if values.get("plan"):
        on_event(
            {
                "event": events.RUN_RESUMED,
                "run_id": values.get("run_id"),
                **events.plan_fields(values["plan"]),
                "steps_done": len(values.get("accepted", [])),
            }
        )


def drive(
    run_id: str,
    graph_input: dict[str, Any] | Command | None,
    context: Context,
    on_event: EventHandler | None,
    models: ChatModels | None = None,
    *,
    announce: bool = True,
) -> RunOutcome:
    """Stream the graph from ``graph_input`` to its end or first pause; ``announce``: tell the
    display where a run continuing from a checkpoint stands (``events.RUN_RESUMED``)."""
    config = {"configurable": {"thread_id": run_id}}
    with open_checkpointer(context.runs_dir) as saver, closing(connect(context.runs_dir)) as conn:
        registry = RunRegistry(conn)
        registry.claim(run_id)  # one driver per run: a second process gets RunBusyError
        graph = build_graph(saver, models=models)
        if announce and on_event is not None and not isinstance(graph_input, dict):
            _announce_resume(graph, config, on_event)
        try:
            for mode, chunk in graph.stream(
                graph_input, config, context=context, stream_mode=["values", "custom", "tasks"], durability="sync"
            ):
                if mode == "custom":
                    if on_event is not None:
                        on_event(chunk)
                elif mode == "tasks":
                    if on_event is not None and "input" in chunk:  # a node starts
                        on_event(_node_started(chunk, context))
                else:  # the full state after each step
                    registry.update(run_id, **counters(chunk))
        except KeyboardInterrupt:
            registry.update(run_id, status="interrupted", error="interrupted by the user")
            raise
        except Exception as exc:  # the run is saved at its last checkpoint: record and report
            registry.update(
                run_id, status="failed", error=redact(f"{type(exc).__name__}: {exc}")
            )  # a URL's password, never stored
            return RunOutcome(run_id, "failed", error=exc)
        snapshot = graph.get_state(config)
        if snapshot.interrupts:  # paused for plan review; resumable with an answer
            registry.update(run_id, status="awaiting_review")
            return RunOutcome(run_id, "awaiting_review", review=snapshot.interrupts[0].value)
        document_dir = snapshot.values.get("document_dir")
        registry.update(run_id, status="finished", document_dir=document_dir)
        return RunOutcome(run_id, "finished", document_dir)
