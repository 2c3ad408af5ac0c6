"""Plan review: with ``review_plan`` on, the run pauses after planning (a LangGraph interrupt)
until someone approves or edits the plan — in the terminal (`interleave run --review-plan`), with
`interleave resume RUN_ID --approve-plan | --plan-file FILE`, or in LangGraph Studio.

Resume values: ``{"approve": true}`` keeps the plan; ``{"plan": [steps…]}`` (or
``{"execution_plan": [...]}``) replaces it, checked by the same rules as the planner's output
(including the run's ``max_plan_steps`` cap).
With ``review_plan`` off the node passes straight through.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from graph.context import Context, context_of
from graph.state import PlanStep, State
from nodes.guidance import check_plan
from tools.replies.parsing import plan_steps

PLAN_REVIEW = "plan_review"


def reviewed_plan(
    answer: Any, input_count: int = 0, max_steps: int | None = None, *, what: str = "the edited plan"
) -> list[PlanStep] | None:
    """The plan a review answer asks for: None to keep the current plan, else the edited steps
    (checked against the request's mode: ``input_count`` images given, and at most ``max_steps``
    steps, the run's ``max_plan_steps``). Raises ValueError naming what is wrong with the answer
    (``what``: the plan's name in it; a plan given to ``start_run`` was not edited)."""
    if answer is True or (isinstance(answer, dict) and answer.get("approve") is True):
        return None
    if isinstance(answer, dict):
        answer = answer.get("plan", answer.get("execution_plan"))
    if isinstance(answer, dict):  # {"plan": {"execution_plan": [...]}} from a saved planner answer
        answer = answer.get("execution_plan")
    if not isinstance(answer, list):
        raise ValueError(
            'a plan review answer is {"approve": true} or {"plan": [steps...]} '
            "(the steps as in the planner's execution_plan)"
        )
    if max_steps is not None and len(answer) > max_steps:  # before parsing: a huge edit costs nothing
        raise ValueError(
            f"{what} has {len(answer)} steps, over this run's max_plan_steps={max_steps}; "
            f"shorten it to at most {max_steps} steps"
        )
    try:
        steps = plan_steps(answer)
        check_plan(steps, input_count)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid: {exc}") from None
    return steps


def review(state: State, runtime: Runtime[Context]) -> dict:
    ctx = context_of(runtime)
    if not ctx.review_plan:
        return {}
    inputs = len(state.get("input_images", []))
    question = {
        "kind": PLAN_REVIEW,
        "run_id": state["run_id"],
        "plan": state["plan"],
        "input_images": inputs,
        "max_plan_steps": ctx.max_plan_steps,
        "resume_with": {"approve": True, "or": {"plan": "[edited steps]"}},
    }
    # An answer that is not a valid plan must not end the node with an error: LangGraph would
    # replay that same answer on every later resume, and the run could never be continued.
    # Instead the node asks again, saying what was wrong; the next answer goes to this new
    # interrupt (LangGraph matches resume values to a node's interrupts in order).
    while True:
        answer = interrupt(question)
        try:
            steps = reviewed_plan(answer, inputs, ctx.max_plan_steps)
        except ValueError as exc:
            question = {**question, "error": str(exc)}
            continue
        return {} if steps is None else {"plan": steps, "plan_mode": check_plan(steps, inputs)}
