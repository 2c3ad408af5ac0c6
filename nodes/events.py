"""Progress events the nodes emit on LangGraph's ``custom`` stream.

Every event is a dict with ``event`` (one of ``EVENTS``) and the ``run_id``; the CLI's progress
display, LangGraph Studio and embedding code all read the same events
(``graph.stream(..., stream_mode=["updates", "custom"])``).
"""

from __future__ import annotations

from typing import Any

PLAN_READY = "plan_ready"  # steps, step_names, step_numbers; given: True for start_run(plan=...)
ATTEMPT_STARTED = "attempt_started"  # step_number, attempt, prompt, seed, mode ("text-to-image"|"edit")
DENOISE_PROGRESS = "denoise_progress"  # step_number, attempt, done, total
IMAGE_READY = "image_ready"  # step_number, attempt, image (ImageRef), seconds
VERDICT = "verdict"  # step_number, attempt, success (bool|None), refine_prompt, error, seconds
STEP_ACCEPTED = "step_accepted"  # step_number, attempt, image, steps_total
RUN_FINISHED = "run_finished"  # document_dir, steps_total
# role, try (the reply that did not parse, 1-based), tries, reason, wait_s; the critic's also
# step_number and attempt:
REPLY_RETRY = "reply_retry"
# Sent by the runner (graph.runs.runner), not by a node, so that a display knows what is being
# waited for before the node has anything to say:
NODE_STARTED = "node_started"  # node, step_number (the current step, if any), model (plan: planner)
RUN_RESUMED = "run_resumed"  # steps, step_names, step_numbers, steps_done: where a resumed/forked run stands

EVENTS = (
    PLAN_READY,
    ATTEMPT_STARTED,
    DENOISE_PROGRESS,
    IMAGE_READY,
    VERDICT,
    STEP_ACCEPTED,
    RUN_FINISHED,
    REPLY_RETRY,
    NODE_STARTED,
    RUN_RESUMED,
)


def plan_fields(plan: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``PLAN_READY`` and ``RUN_RESUMED`` say of a plan: its size, step names and numbers."""
    return {
        "steps": len(plan),
        "step_names": [s["step_name"] for s in plan],
        "step_numbers": [s["step_number"] for s in plan],
    }


def emit(runtime: Any, event: str, run_id: str, **fields: Any) -> None:
    """Send one event; a no-op when the graph is not being streamed."""
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({"event": event, "run_id": run_id, **fields})
