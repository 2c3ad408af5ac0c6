"""Reading planner and critic replies: ``<think>…</think><answer>{…}</answer>`` (SPEC §2–3).

Why this module is defensive: the replies come from sampled language models. They wrap the
answer in code fences and prose, write Python dicts instead of JSON, forget closing tags, stop
mid-object at the token limit, or put example objects in their reasoning. A parser that guesses
wrong either wastes a costly regeneration or, worse, acts on content the model never wrote. So:

* the answer is read from ``<answer>`` when there is one, never from the reasoning;
* near-JSON is repaired only where the repair is unambiguous (quotes, commas, literals, keys),
  by one linear pass over the text, never by backtracking regular expressions;
* a reply cut off inside its object is reported as truncated, not completed;
* every failure is a ``ReplyParseError`` (a ``ValueError``) with the raw reply, a short
  ``reason`` code (see ``REASONS``) and a message, so callers can retry, record or reward it.

Input sizes are capped (``MAX_REPLY_CHARS``, ``MAX_OBJECT_CHARS``, ``MAX_DEPTH``) so a runaway
reply costs milliseconds, not minutes, and ``ast.literal_eval`` only sees small, shallow text.

The near-JSON repair (finding, repairing and reading one object, with its limits) lives in
``tools.replies.json_repair``; its limits are importable from here too. This module knows the reply
format (tags), the contracts of plans and verdicts, and the error types.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, TypeVar

from tools.replies.contracts import REFINE_KEY, SUCCESS_KEY, PlanStep
from tools.replies.json_repair import (
    LITERAL_EVAL_CHARS,
    MAX_CANDIDATES,
    MAX_DEPTH,
    MAX_OBJECT_CHARS,
    _Failure,
    _read_answer_text,
    _trailing_object,
)

__all__ = [
    "LITERAL_EVAL_CHARS",
    "MAX_CANDIDATES",
    "MAX_DEPTH",
    "MAX_OBJECT_CHARS",
    "MAX_REPLY_CHARS",
    "REASONS",
    "PlanParseError",
    "PlanStep",
    "ReplyParseError",
    "VerdictParseError",
    "check_narrative",
    "parse_mapping",
    "parse_plan",
    "parse_verdict",
    "plan_steps",
    "read_answer",
    "split_reply",
    "verdict_fields",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_REPLY_CHARS = 1_000_000  # ~50x the longest reply a 4096-token budget allows

REASONS = {
    "not_text": "the reply is not a string",
    "too_large": "the reply or its answer object is larger than the parser accepts",
    "too_deep": "the answer object is nested deeper than the parser accepts",
    "no_answer": "the reply holds no answer: no <answer> text and no {...} object",
    "not_an_object": "the answer holds no {...} object (prose, a list or a bare value)",
    "truncated": "the reply stops inside the reasoning or inside the answer object",
    "syntax": "a {...} object is there but is not readable as JSON or a Python dict",
    "schema": "the object does not follow the contract (keys, types, values)",
    "invalid": "set by callers that reject a reply for their own reasons",
    "internal": "a parser bug; the reply is kept so it can be reproduced",
}


class ReplyParseError(ValueError):
    """A model reply does not follow the contract.

    ``reply`` keeps the raw text, ``reason`` is one of ``REASONS`` (a short code for counting
    and rewards), and the message says what was wrong in words.
    """

    def __init__(self, message: str, reply: Any, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reply = reply
        self.reason = reason

    def __reduce__(self):  # keeps reply and reason across pickling (process pools, checkpoints)
        return type(self), (str(self), self.reply, self.reason)


class PlanParseError(ReplyParseError):
    pass


class VerdictParseError(ReplyParseError):
    pass


# --------------------------------------------------------------------------- tags

_TAG = re.compile(r"<(/?)(think|answer)>", re.I)


def _answer_blocks(text: str, start: int) -> list[str]:
    """The bodies of the ``<answer>`` blocks after ``start``. A block ends at its ``</answer>``,
    at the next ``<answer>``, or at the end of the text."""
    tags = [m for m in _TAG.finditer(text, start) if m.group(2).lower() == "answer"]
    blocks = []
    for index, tag in enumerate(tags):
        if not tag.group(1):
            end = tags[index + 1].start() if index + 1 < len(tags) else len(text)
            blocks.append(text[tag.end() : end])
    if not blocks:  # "{...}</answer>" with the opening tag forgotten
        close = next((t for t in tags if t.group(1)), None)
        if close is not None:
            blocks.append(text[start : close.start()])
    return blocks


def _split(text: str) -> tuple[str, int, bool]:
    """(reasoning, where the answer part starts, whether the reasoning was left open)."""
    tags = list(_TAG.finditer(text))
    opened = next((t for t in tags if t.group(2).lower() == "think" and not t.group(1)), None)
    closed = next(
        (
            t
            for t in tags
            if t.group(2).lower() == "think" and t.group(1) and (opened is None or t.start() > opened.start())
        ),
        None,
    )
    if closed is not None:  # "R</think>" without "<think>" is what Qwen3 chat templates leave
        begin = opened.end() if opened is not None else 0
        return text[begin : closed.start()].strip(), closed.end(), False
    first_answer = next((t for t in tags if t.group(2).lower() == "answer"), None)
    if opened is not None:  # the reasoning runs until the answer starts, or to the end
        end = first_answer.start() if first_answer else len(text)
        return text[opened.end() : end].strip(), end, first_answer is None
    if first_answer is not None:  # prose, then <answer>: the prose is the reasoning
        return text[: first_answer.start()].strip(), first_answer.start(), False
    return "", 0, False


def split_reply(text: str) -> tuple[str, str]:
    """Return (reasoning, answer text). Without an ``<answer>`` tag the answer is the text after
    the reasoning, so a bare JSON reply still parses. With several blocks, the last one."""
    reasoning, start, _ = _split(text)
    blocks = _answer_blocks(text, start)
    body = blocks[-1] if blocks else text[start:]
    return reasoning, body.strip()


# --------------------------------------------------------------------------- reading a reply


def _read(text: str, key: str | None) -> tuple[str, dict[str, Any]]:
    """(reasoning, answer object) of a reply; raises _Failure."""
    if not isinstance(text, str):
        raise _Failure("not_text", f"the reply is a {type(text).__name__}, not a string")
    if len(text) > MAX_REPLY_CHARS:
        raise _Failure("too_large", f"the reply has {len(text)} characters, more than {MAX_REPLY_CHARS}")
    reasoning, start, open_think = _split(text)
    blocks = _answer_blocks(text, start)
    if blocks:  # the last block holding an answer object wins; else the last object at all
        latest, failure = None, None
        for body in reversed(blocks[-MAX_CANDIDATES:]):
            try:
                value = _read_answer_text(body, key)
            except _Failure as exc:
                failure = failure or exc
                continue
            if key is None or key in value:
                return reasoning, value
            latest = latest if latest is not None else value
        if latest is not None:
            return reasoning, latest
        raise failure
    if open_think:
        found = _trailing_object(reasoning, key)
        if found is None:
            raise _Failure("truncated", "the reply stops inside <think>: no </think> and no answer")
        return reasoning[: found[1]].strip(), found[0]
    rest = text[start:]
    if "{" not in rest:
        raise _Failure("no_answer", "no <answer> tag and no {...} object found")
    return reasoning, _read_answer_text(rest, key)


def _typed(error: type[ReplyParseError], what: str, text: Any, parse: Callable[[], T]) -> T:
    """Run ``parse()`` and turn every failure into ``error`` with a reason code."""
    try:
        return parse()
    except _Failure as exc:
        raise error(f"{what} ({exc.reason}): {exc}", text, exc.reason) from None
    except Exception as exc:  # a parser bug must not take the run down; keep the reply
        logger.exception("reply parser failed unexpectedly")
        raise error(f"{what} (internal): {type(exc).__name__}: {exc}", text, "internal") from None


def parse_mapping(text: str) -> dict[str, Any]:
    """Parse a JSON object or Python-literal dict out of ``text`` (fences, prose around it,
    trailing commas, smart quotes and bare keys tolerated). Raises ReplyParseError.

    >>> parse_mapping("Sure! ```json\\n{step: 1, 'ok': True, “name”: “Start”,}\\n```")
    {'step': 1, 'ok': True, 'name': 'Start'}
    """

    def parse():
        if not isinstance(text, str):
            raise _Failure("not_text", f"got a {type(text).__name__}, not a string")
        return _read_answer_text(text, None)

    return _typed(ReplyParseError, "no usable object", text, parse)


def read_answer(text: str, key: str | None = None) -> tuple[str, dict[str, Any]]:
    """Return (reasoning, answer object) of a ``<think>…</think><answer>{…}</answer>`` reply.

    ``key`` names the answer's top-level key; when several objects are present the one holding
    it wins. Raises ReplyParseError with a reason code; nothing else escapes for any input.
    """
    return _typed(ReplyParseError, "reply has no usable answer", text, lambda: _read(text, key))


# --------------------------------------------------------------------------- contracts


def _optional_text(step: dict[str, Any], key: str) -> str | None:
    value = step.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string or null, got {type(value).__name__}")
    value = value.strip()
    return value if value and value.lower() not in ("null", "none") else None


def _step_number(item: dict[str, Any], position: int) -> int:
    number = item.get("step_number", position)
    if isinstance(number, str) and number.strip().isdecimal() and len(number.strip()) < 10:
        number = int(number)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError(f"step {position}: 'step_number' must be a positive integer, got {number!r:.40}")
    return number


def plan_steps(items: Any) -> list[PlanStep]:
    """Validate a list of plan steps (from a model reply or a user's edit); ValueError says why.

    A step is ``{step_number, step_name, instruction, prompt, auxiliary_text}``; the numbers
    must be consecutive. Tolerated: a number written as a digit string, a missing number (the
    position), a missing name ("Step N"), and "", "null" or "none" for a null text.
    """
    if not isinstance(items, list) or not items:
        raise ValueError("'execution_plan' must be a non-empty list of steps")
    steps: list[PlanStep] = []
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"step {position} is not an object")
        number = _step_number(item, position)
        steps.append(
            PlanStep(
                step_number=number,
                step_name=_optional_text(item, "step_name") or f"Step {number}",
                instruction=_optional_text(item, "instruction"),
                prompt=_optional_text(item, "prompt"),
                auxiliary_text=_optional_text(item, "auxiliary_text"),
            )
        )
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


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"'previous_step_success' must be true or false, got {value!r:.40}")


def verdict_fields(answer: dict[str, Any]) -> tuple[bool, str]:
    """Validate a critic answer object; return (success, refine_prompt). ValueError says why.

    ``previous_step_success`` must be a boolean or the string "true"/"false" (any case). Numbers
    (0/1) and "yes"/"no" are refused: the contract and the training data use booleans only,
    and a number there is format drift worth seeing (the RL format reward counts it).
    ``refine_prompt`` is a string, trimmed; a missing or null one reads as "". A failed verdict
    needs a non-empty one; a successful verdict may leave it empty (the caller then keeps the
    prompt it used).
    """
    if SUCCESS_KEY not in answer:
        raise ValueError(f"missing '{SUCCESS_KEY}'")
    success = _as_bool(answer[SUCCESS_KEY])
    refine = answer.get(REFINE_KEY)
    if refine is not None and not isinstance(refine, str):
        raise ValueError(f"'{REFINE_KEY}' must be a string, got {type(refine).__name__}")
    refine = (refine or "").strip()
    if not success and not refine:
        raise ValueError("a failed verdict needs a non-empty 'refine_prompt'")
    return success, refine


# --------------------------------------------------------------------------- entry points


def _checked(check, value):
    """``check(value)``, with the contract's ValueError turned into a "schema" failure."""
    try:
        return check(value)
    except ValueError as exc:
        raise _Failure("schema", str(exc)) from None


def parse_plan(text: str) -> tuple[str, list[PlanStep]]:
    """Parse a planner reply into (reasoning, steps); raises PlanParseError (see ``REASONS``).

    >>> r, steps = parse_plan("<think>ok</think><answer>{'execution_plan': [{'step_number': 1, "
    ...     "'step_name': 'Start', 'instruction': 'A square sheet', 'prompt': 'a sheet of paper', "
    ...     "'auxiliary_text': None}]}</answer>")
    >>> steps[0]["prompt"], r
    ('a sheet of paper', 'ok')
    >>> parse_plan('<think>Step 1 is {"step_number": 1}</think><answer>{"execution_plan": [')
    Traceback (most recent call last):
    ...
    tools.replies.parsing.PlanParseError: planner reply is not a valid plan (truncated): the reply ends before the object closes
    """

    def parse():
        reasoning, answer = _read(text, "execution_plan")
        return reasoning, _checked(plan_steps, answer.get("execution_plan"))

    return _typed(PlanParseError, "planner reply is not a valid plan", text, parse)


def parse_verdict(text: str) -> tuple[str, bool, str]:
    """Parse a critic reply into (reasoning, success, refine_prompt); raises VerdictParseError.

    See ``verdict_fields`` for what counts as a verdict.

    >>> parse_verdict('<think>hand has six fingers</think><answer>{"previous_step_success": false, '
    ...               '"refine_prompt": "a hand with five fingers"}</answer>')
    ('hand has six fingers', False, 'a hand with five fingers')
    >>> parse_verdict("<answer>{'previous_step_success': 1, 'refine_prompt': ''}</answer>")
    Traceback (most recent call last):
    ...
    tools.replies.parsing.VerdictParseError: critic reply is not a valid verdict (schema): 'previous_step_success' must be true or false, got 1
    """

    def parse():
        reasoning, answer = _read(text, "previous_step_success")
        return (reasoning, *_checked(verdict_fields, answer))

    return _typed(VerdictParseError, "critic reply is not a valid verdict", text, parse)
