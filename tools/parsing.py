"""Parsing of planner and critic replies: ``<think>…</think><answer>{…}</answer>``.

Models emit JSON, Python-literal dicts (single quotes, True/False/None), code fences, trailing
commas, or forget the closing tag. We accept all of those, then validate the result against the
contract (SPEC §2–3) and raise a typed error that says what was wrong, so callers can retry or
record the failure instead of guessing.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from graph.state import PlanStep

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class ReplyParseError(ValueError):
    """A model reply does not follow the contract; ``reply`` keeps the raw text."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


class PlanParseError(ReplyParseError):
    pass


class VerdictParseError(ReplyParseError):
    pass


def split_reply(text: str) -> tuple[str, str]:
    """Return (reasoning, answer text). Without an ``<answer>`` tag the answer is the text after
    the reasoning, so a bare JSON reply still parses."""
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else ""
    answer = _ANSWER.search(text)
    if answer:
        body = answer.group(1)
    else:
        body = text[think.end():] if think else text
    return reasoning, body.strip()


def parse_mapping(text: str) -> dict[str, Any]:
    """Parse a JSON object or Python-literal dict out of ``text`` (fences, prose around it, and
    trailing commas tolerated). Raises ValueError if there is none."""
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no {...} object found")
    candidate = body[start:end + 1]
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            value = json.loads(attempt)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(attempt)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(value, dict):
            return value
    raise ValueError("the {...} object is neither JSON nor a Python dict literal")


def _optional_text(step: dict[str, Any], key: str) -> str | None:
    value = step.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string or null, got {type(value).__name__}")
    value = value.strip()
    return value if value and value.lower() not in ("null", "none") else None


def plan_steps(items: Any) -> list[PlanStep]:
    """Validate a list of plan steps (from a model reply or a user's edit); ValueError says why."""
    if not isinstance(items, list) or not items:
        raise ValueError("'execution_plan' must be a non-empty list of steps")
    steps: list[PlanStep] = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"step {position + 1} is not an object")
        number = item.get("step_number", position + 1)
        if isinstance(number, str) and number.strip().isdigit():
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError(f"step {position + 1}: 'step_number' must be an integer")
        steps.append(PlanStep(
            step_number=number,
            step_name=_optional_text(item, "step_name") or f"Step {number}",
            instruction=_optional_text(item, "instruction"),
            prompt=_optional_text(item, "prompt"),
            auxiliary_text=_optional_text(item, "auxiliary_text"),
        ))
    numbers = [s["step_number"] for s in steps]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ValueError(f"step numbers {numbers} are not consecutive")
    return steps


def check_narrative(steps: list[PlanStep]) -> None:
    """Narrative mode: numbered from 1, and every step is an image operation (has a prompt)."""
    if steps[0]["step_number"] != 1:
        raise ValueError(f"the plan starts at step {steps[0]['step_number']}, expected 1")
    missing = [s["step_number"] for s in steps if not s["prompt"]]
    if missing:
        raise ValueError(f"steps {missing} have no 'prompt'; every step must be an image operation")


def parse_plan(text: str) -> tuple[str, list[PlanStep]]:
    """Parse a planner reply into (reasoning, steps).

    >>> r, steps = parse_plan("<think>ok</think><answer>{'execution_plan': [{'step_number': 1, "
    ...     "'step_name': 'Start', 'instruction': 'A square sheet', 'prompt': 'a sheet of paper', "
    ...     "'auxiliary_text': None}]}</answer>")
    >>> steps[0]["prompt"], r
    ('a sheet of paper', 'ok')
    """
    reasoning, body = split_reply(text)
    try:
        steps = plan_steps(parse_mapping(body).get("execution_plan"))
    except ValueError as exc:
        raise PlanParseError(f"planner reply is not a valid plan: {exc}", text) from None
    return reasoning, steps


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"'previous_step_success' must be true or false, got {value!r}")


def parse_verdict(text: str) -> tuple[str, bool, str]:
    """Parse a critic reply into (reasoning, success, refine_prompt).

    >>> parse_verdict('<think>hand has six fingers</think><answer>{"previous_step_success": false, '
    ...               '"refine_prompt": "a hand with five fingers"}</answer>')
    ('hand has six fingers', False, 'a hand with five fingers')
    """
    reasoning, body = split_reply(text)
    try:
        raw = parse_mapping(body)
        if "previous_step_success" not in raw:
            raise ValueError("missing 'previous_step_success'")
        success = _as_bool(raw["previous_step_success"])
        refine = raw.get("refine_prompt")
        if refine is not None and not isinstance(refine, str):
            raise ValueError("'refine_prompt' must be a string")
        refine = (refine or "").strip()
        if not success and not refine:
            raise ValueError("a failed verdict needs a non-empty 'refine_prompt'")
    except ValueError as exc:
        raise VerdictParseError(f"critic reply is not a valid verdict: {exc}", text) from None
    return reasoning, success, refine
