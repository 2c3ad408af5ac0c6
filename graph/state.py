"""The graph's typed state: small, JSON-shaped, and free of pixels.

Every value here ends up in a SQLite checkpoint after every node, so the state holds only
references to images (files in the content-addressed store under the runs directory), never
the images themselves. Plain ``TypedDict``s keep checkpoints readable by any tool and stable
across library versions.
"""

from __future__ import annotations

from typing import Annotated

# typing_extensions, not typing: on Python < 3.12 pydantic (used by the LangGraph server to build
# Studio's input and output forms) only accepts typing_extensions.TypedDict.
from typing_extensions import NotRequired, TypedDict

from tools.replies.contracts import PlanStep, Verdict
from tools.store.images import ImageRef


class Attempt(TypedDict):
    """One generation for one step: what was asked, what came out, what the critic said."""

    step_number: int
    attempt: int  # 1-based within the step
    prompt: str  # the prompt actually sent to the generator
    seed: int
    source: ImageRef | None  # the image that was edited; None for text-to-image
    references: NotRequired[list[ImageRef]]  # extra reference images (anchored reference policy)
    image: ImageRef
    last_allowed: bool  # True when no further generation is allowed: accepted without a critic call
    verdict: Verdict | None
    generate_s: float
    critique_s: float | None


class AcceptedStep(TypedDict):
    step_number: int
    attempt: int  # 0 for a guidance step answered about a given image (nothing generated)
    image: ImageRef


class DocumentEntry(TypedDict):
    """One entry of the final interleaved document: the text shown with the step, and its image."""

    step_number: int
    step_name: str
    text: str
    image: ImageRef | None


def merge_attempts(existing: list[Attempt] | None, new: list[Attempt] | Attempt) -> list[Attempt]:
    """Reducer: add attempts, replacing one with the same (step, attempt) key.

    The generator appends a fresh attempt; the critic returns the same attempt with its verdict
    filled in. Only the changed attempt travels in the node's write.

    >>> a = {"step_number": 1, "attempt": 1, "verdict": None}
    >>> b = {"step_number": 1, "attempt": 1, "verdict": {"success": True}}
    >>> merge_attempts([a], [b]) == [b]
    True
    """
    merged = list(existing or [])
    index = {(a["step_number"], a["attempt"]): i for i, a in enumerate(merged)}
    for attempt in new if isinstance(new, list) else [new]:
        key = (attempt["step_number"], attempt["attempt"])
        if key in index:
            merged[index[key]] = attempt
        else:
            index[key] = len(merged)
            merged.append(attempt)
    return merged


def merge_forms(existing: dict[str, str] | None, new: dict[str, str]) -> dict[str, str]:
    """Reducer: the structured-output form each endpoint accepted (``auto``), newest wins.

    >>> merge_forms({"http://a/v1": "json"}, {"http://b/v1": "json_object"})
    {'http://a/v1': 'json', 'http://b/v1': 'json_object'}
    """
    return {**(existing or {}), **new}


def append_accepted(existing: list[AcceptedStep] | None, new: list[AcceptedStep]) -> list[AcceptedStep]:
    """Reducer: accepted steps only ever grow, one per step, in order."""
    merged = list(existing or [])
    done = {a["step_number"] for a in merged}
    merged.extend(a for a in new if a["step_number"] not in done)
    return merged


class InputState(TypedDict):
    """What a caller provides: the request text and, optionally, input images (paths)."""

    request: str
    images: NotRequired[list[str]]
    run_id: NotRequired[str]


class OutputState(TypedDict):
    """What a caller gets back: the interleaved document and where its files are."""

    run_id: str
    plan: list[PlanStep]
    document: list[DocumentEntry]
    document_dir: str


class State(InputState):
    """Everything the graph tracks for one trajectory."""

    input_images: NotRequired[list[ImageRef]]
    plan: NotRequired[list[PlanStep]]
    plan_reasoning: NotRequired[str]
    plan_mode: NotRequired[str]  # narrative | answer | continue | answer+continue (nodes.guidance)
    step_index: NotRequired[int]  # 0-based index into ``plan`` of the step being worked on
    attempts: NotRequired[Annotated[list[Attempt], merge_attempts]]
    accepted: NotRequired[Annotated[list[AcceptedStep], append_accepted]]
    document: NotRequired[list[DocumentEntry]]
    document_dir: NotRequired[str]
    # ``--vlm-structured-output auto``: endpoint base URL -> the form it accepted (json,
    # json_object or off); a resumed run starts from it (nodes.adapters.structured_mode).
    structured_output: NotRequired[Annotated[dict[str, str], merge_forms]]
    forked_from: NotRequired[dict]  # {run_id, step_number, prompt_changed} for a forked run


def current_step(state: State) -> PlanStep:
    return state["plan"][state.get("step_index", 0)]


def attempts_for(state: State, step_number: int) -> list[Attempt]:
    return [a for a in state.get("attempts", []) if a["step_number"] == step_number]


def previous_image(state: State) -> ImageRef | None:
    """The image the current step edits: the last accepted one; before any, the last image the
    user gave (guidance mode continues it); None for a text-to-image first step."""
    accepted = state.get("accepted", [])
    if accepted:
        return accepted[-1]["image"]
    inputs = state.get("input_images", [])
    return inputs[-1] if inputs else None
