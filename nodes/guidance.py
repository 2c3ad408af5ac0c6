"""Guidance mode: requests that come with the user's own images (SPEC §2).

The mode follows from the request, never from a flag: a request with images is in guidance mode,
and the planner decides from its words which task it asks for, which shows in the plan's shape:
- Task A ("answer"): the images are complete and the user wants text for them. Such a step has no
  ``prompt`` and carries its text in ``auxiliary_text``; step k belongs to input image k and
  nothing is generated for it.
- Task B ("continue"): the images begin a sequence and the user wants it continued. Numbering
  goes on after the last given image and each step has a ``prompt``; the first one edits the last
  input image.
A plan may answer about some images and then continue ("answer+continue"); text steps come first.

``<image>`` markers in the request text place the images; without markers they follow the text.
"""

from __future__ import annotations

from graph.state import PlanStep
from tools.replies.parsing import check_narrative

IMAGE_MARKER = "<image>"
MODES = ("narrative", "answer", "continue", "answer+continue")


class ImageMarkerError(ValueError):
    """The request's ``<image>`` markers do not match the images given."""


def request_segments(request: str, image_count: int) -> list[str | int]:
    """The request as text pieces and image indexes (0-based), in reading order.

    >>> request_segments("Before <image> and after <image>: what changed?", 2)
    ['Before ', 0, ' and after ', 1, ': what changed?']
    >>> request_segments("Continue this story", 1)
    ['Continue this story', 0]
    """
    pieces = request.split(IMAGE_MARKER)
    markers = len(pieces) - 1
    if markers == 0:
        return [request, *range(image_count)]
    if markers != image_count:
        raise ImageMarkerError(
            f"the request has {markers} {IMAGE_MARKER} marker(s) but {image_count} image(s) were "
            f"given; give one image (--image PATH) per marker, or remove the markers to place all "
            f"images after the text"
        )
    segments: list[str | int] = []
    for index, piece in enumerate(pieces):
        if piece:
            segments.append(piece)
        if index < markers:
            segments.append(index)
    return segments


def check_plan(steps: list[PlanStep], input_count: int) -> str:
    """Check a plan against the request's mode and return the mode; ValueError says what is wrong.

    >>> text = {"step_name": "s", "instruction": None, "prompt": None, "auxiliary_text": "It boils."}
    >>> draw = {"step_name": "s", "instruction": "i", "prompt": "add steam", "auxiliary_text": None}
    >>> check_plan([{**text, "step_number": 1}, {**text, "step_number": 2}], 2)
    'answer'
    >>> check_plan([{**draw, "step_number": 3}], 2)
    'continue'
    """
    if input_count == 0:
        check_narrative(steps)
        return "narrative"
    text_steps = [s for s in steps if not s["prompt"]]
    drawn = [s for s in steps if s["prompt"]]
    for step in text_steps:
        if not step["auxiliary_text"]:
            raise ValueError(
                f"step {step['step_number']} has neither a prompt (an image to draw) nor "
                f"auxiliary_text (the text asked for)"
            )
        if not 1 <= step["step_number"] <= input_count:
            raise ValueError(
                f"step {step['step_number']} has no prompt, so it must answer about one "
                f"of the {input_count} given images (steps 1 to {input_count})"
            )
    if drawn and drawn[0]["step_number"] != input_count + 1:
        raise ValueError(
            f"the first drawn step is numbered {drawn[0]['step_number']}; it continues "
            f"the {input_count} given images, so it must be step {input_count + 1}"
        )
    if text_steps and drawn and steps.index(drawn[0]) < steps.index(text_steps[-1]):
        raise ValueError("text-only steps must come before the drawn steps")
    if text_steps and drawn:
        return "answer+continue"
    return "continue" if drawn else "answer"
