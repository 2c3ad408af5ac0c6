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
"""

from __future__ import annotations

import ast
import json
import logging
import re
import warnings
from typing import Any, Callable, TypeVar

from graph.state import PlanStep

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_REPLY_CHARS = 1_000_000   # ~50x the longest reply a 4096-token budget allows
MAX_OBJECT_CHARS = 300_000    # one answer object
MAX_DEPTH = 32                # a plan is 3 levels deep
MAX_CANDIDATES = 32           # "{" positions tried per answer text
LITERAL_EVAL_CHARS = 50_000   # ast.literal_eval is a fallback for small objects only

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


class _Failure(Exception):
    """Internal: why one piece of text yielded no object (turned into a ReplyParseError)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
            blocks.append(text[tag.end():end])
    if not blocks:  # "{...}</answer>" with the opening tag forgotten
        close = next((t for t in tags if t.group(1)), None)
        if close is not None:
            blocks.append(text[start:close.start()])
    return blocks


def _split(text: str) -> tuple[str, int, bool]:
    """(reasoning, where the answer part starts, whether the reasoning was left open)."""
    tags = list(_TAG.finditer(text))
    opened = next((t for t in tags if t.group(2).lower() == "think" and not t.group(1)), None)
    closed = next((t for t in tags if t.group(2).lower() == "think" and t.group(1)
                   and (opened is None or t.start() > opened.start())), None)
    if closed is not None:  # "R</think>" without "<think>" is what Qwen3 chat templates leave
        begin = opened.end() if opened is not None else 0
        return text[begin:closed.start()].strip(), closed.end(), False
    first_answer = next((t for t in tags if t.group(2).lower() == "answer"), None)
    if opened is not None:  # the reasoning runs until the answer starts, or to the end
        end = first_answer.start() if first_answer else len(text)
        return text[opened.end():end].strip(), end, first_answer is None
    if first_answer is not None:  # prose, then <answer>: the prose is the reasoning
        return text[:first_answer.start()].strip(), first_answer.start(), False
    return "", 0, False


def split_reply(text: str) -> tuple[str, str]:
    """Return (reasoning, answer text). Without an ``<answer>`` tag the answer is the text after
    the reasoning, so a bare JSON reply still parses. With several blocks, the last one."""
    reasoning, start, _ = _split(text)
    blocks = _answer_blocks(text, start)
    body = blocks[-1] if blocks else text[start:]
    return reasoning, body.strip()


# --------------------------------------------------------------------------- lenient reading

_NEXT = re.compile(r"""["'“”‘’{}\[\],#/\\]|[A-Za-z_]""")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s*")
_OPEN_QUOTES = {'"': '"', "'": "'", "“": "”“\"", "”": "”“\"", "‘": "’‘'", "’": "’‘'"}
_STRING_BODY = {q: re.compile(r"[^%s\\]*(?:\\.[^%s\\]*)*" % (c, c), re.S)
                for q, c in _OPEN_QUOTES.items()}
_CLOSES_VALUE = frozenset(",:}]\"'“”‘’#/")
_LITERALS = {"true": "true", "True": "true", "false": "false", "False": "false",
             "null": "null", "None": "null", "none": "null", "NULL": "null"}
_ESCAPE = re.compile(r"\\(U[0-9a-fA-F]{8}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "a": "\a",
                   "/": "/", '"': '"', "'": "'", "\\": "\\", "\n": ""}


def _unescape_char(match: re.Match) -> str:
    code = match.group(1)
    if code[0] in "uUx" and len(code) > 1:
        value = int(code[1:], 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _SIMPLE_ESCAPES.get(code, match.group(0))


def _unescape(body: str) -> str:
    """Decode JSON and Python string escapes leniently (an unknown escape stays as written)."""
    text = _ESCAPE.sub(_unescape_char, body)
    try:  # join "\ud83d\ude00"-style surrogate pairs into one character
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        return text


def _peek(text: str, index: int) -> str:
    """The next non-space character at or after ``index`` ("" at the end)."""
    index = _SPACE.match(text, index).end()
    return text[index] if index < len(text) else ""


def _string_end(text: str, index: int) -> int:
    """Given an opening quote at ``index``, the index of its closing quote. A quote that is not
    followed by ``, : } ]``, another quote or the end is taken as part of the text (models write
    ``"a sign reading "OPEN""``). Raises _Failure("truncated") if the string never closes."""
    body, closers = _STRING_BODY[text[index]], _OPEN_QUOTES[text[index]]
    position = index + 1
    while True:
        position = body.match(text, position).end()
        if position >= len(text) or text[position] not in closers:
            raise _Failure("truncated", "the reply ends inside a string")
        following = _peek(text, position + 1)
        if not following or following in _CLOSES_VALUE:
            return position
        position += 1


def _to_json(text: str, start: int) -> tuple[str, int]:
    """Rewrite the object opening at ``text[start] == "{"`` as strict JSON, in one pass.

    Outside strings: single, smart or double quotes become JSON strings; bare keys get quoted;
    True/False/None become JSON literals; trailing commas and ``//``/``#`` comments go.
    Returns (json text, index after the closing brace). Raises _Failure for an object that
    never closes ("truncated"), is nested too deep or is too long.
    """
    out: list[str] = []
    depth, index, limit = 0, start, min(len(text), start + MAX_OBJECT_CHARS)
    while index < limit:
        match = _NEXT.search(text, index, limit)
        if match is None:
            break
        out.append(text[index:match.start()])
        index, char = match.start(), match.group()
        if char in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Failure("too_deep", f"the object is nested more than {MAX_DEPTH} levels")
            out.append(char)
        elif char in "}]":
            depth -= 1
            out.append(char)
            if depth == 0:
                return "".join(out), index + 1
        elif char in _OPEN_QUOTES:
            end = _string_end(text, index)
            out.append(json.dumps(_unescape(text[index + 1:end]), ensure_ascii=False))
            index = end
        elif char == ",":
            if _peek(text, index + 1) not in ("}", "]", ","):
                out.append(char)
        elif char == "#" or text.startswith("//", index):
            newline = text.find("\n", index)
            index = (newline if newline >= 0 else len(text)) - 1
        elif char == "\\" and text[index + 1:index + 2] in ("n", "t", "r"):
            out.append(" ")  # a literal "\n" between tokens
            index += 1
        elif char in "/\\":
            out.append(char)
        else:
            word = _WORD.match(text, index).group()
            out.append(json.dumps(word) if _peek(text, index + len(word)) == ":"
                       else _LITERALS.get(word, word))
            index += len(word) - 1
        index += 1
    if limit < len(text):
        raise _Failure("too_large", f"the object is longer than {MAX_OBJECT_CHARS} characters")
    raise _Failure("truncated", "the reply ends before the object closes")


_READ_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError)


def _load(raw: str, repaired: str) -> Any:
    """Read an object: as JSON, then repaired JSON, then (if small) as a Python literal."""
    for attempt in (raw, repaired):
        try:
            return json.loads(attempt, strict=False)
        except _READ_ERRORS:
            pass
    if len(raw) <= LITERAL_EVAL_CHARS:
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" and the like
                warnings.simplefilter("ignore")
                return ast.literal_eval(raw)
        except _READ_ERRORS:
            pass
    raise _Failure("syntax", "the {...} object is neither JSON nor a Python dict literal")


def _objects(text: str, key: str | None) -> dict[str, Any]:
    """The first object in ``text`` holding ``key`` (else the first object at all).

    Tries up to MAX_CANDIDATES "{" positions and about MAX_OBJECT_CHARS of text. An object that
    runs to the end of the text stops the search: every later "{" lies inside it, so reading one
    would invent an answer out of a truncated reply.
    """
    found, failure, index, scanned = None, None, text.find("{"), 0
    for _ in range(MAX_CANDIDATES):
        if index < 0 or scanned > MAX_OBJECT_CHARS:
            break
        try:
            repaired, end = _to_json(text, index)
            scanned += end - index
            value = _load(text[index:end], repaired)
        except _Failure as exc:
            failure = exc
            if exc.reason != "syntax":
                break
            index = text.find("{", index + 1)
            continue
        if isinstance(value, dict):
            if key is None or key in value:
                return value
            found = found if found is not None else value
        index = text.find("{", end)
    if found is not None:
        return found
    raise failure or _Failure("not_an_object", "the answer holds no {...} object")


def _escaped(text: str) -> str | None:
    """``{\\"key\\": …}`` (an answer JSON-escaped once more) unescaped, else None."""
    brace = text.find("{")
    if brace < 0 or not text.startswith('\\"', _SPACE.match(text, brace + 1).end()):
        return None
    return _unescape(text)


def _read_answer_text(text: str, key: str | None) -> dict[str, Any]:
    if not text.strip():
        raise _Failure("no_answer", "the answer is empty")
    if "{" not in text:
        raise _Failure("not_an_object", "the answer holds no {...} object")
    unescaped = _escaped(text)
    return _objects(unescaped if unescaped is not None else text, key)


_LEADS_OBJECT = frozenset("\n`:")


def _trailing_object(text: str, key: str | None) -> tuple[dict[str, Any], int] | None:
    """(object, where it starts) for an object holding ``key`` that ends the text (after a
    newline, fence or colon), in a reply whose ``<think>`` never closed and that has no
    ``<answer>``; else None."""
    end = len(text.rstrip().rstrip("`").rstrip())
    index = text.rfind("{", 0, end)
    for _ in range(MAX_CANDIDATES):
        if index < 0:
            return None
        before = text[:index].rstrip(" \t")
        if not before or before[-1] in _LEADS_OBJECT:
            try:
                repaired, stop = _to_json(text, index)
                value = _load(text[index:stop], repaired)
            except _Failure:
                value = None
            if isinstance(value, dict) and stop == end and (key is None or key in value):
                return value, index
        index = text.rfind("{", 0, index)
    return None


def _read(text: str, key: str | None) -> tuple[str, dict[str, Any]]:
    """(reasoning, answer object) of a reply; raises _Failure."""
    if not isinstance(text, str):
        raise _Failure("not_text", f"the reply is a {type(text).__name__}, not a string")
    if len(text) > MAX_REPLY_CHARS:
        raise _Failure("too_large", f"the reply has {len(text)} characters, more than "
                                    f"{MAX_REPLY_CHARS}")
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
        return reasoning[:found[1]].strip(), found[0]
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
        raise ValueError(f"step {position}: 'step_number' must be a positive integer, "
                         f"got {number!r:.40}")
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
    if "previous_step_success" not in answer:
        raise ValueError("missing 'previous_step_success'")
    success = _as_bool(answer["previous_step_success"])
    refine = answer.get("refine_prompt")
    if refine is not None and not isinstance(refine, str):
        raise ValueError(f"'refine_prompt' must be a string, got {type(refine).__name__}")
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
    tools.parsing.PlanParseError: planner reply is not a valid plan (truncated): the reply ends before the object closes
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
    tools.parsing.VerdictParseError: critic reply is not a valid verdict (schema): 'previous_step_success' must be true or false, got 1
    """
    def parse():
        reasoning, answer = _read(text, "previous_step_success")
        return (reasoning, *_checked(verdict_fields, answer))
    return _typed(VerdictParseError, "critic reply is not a valid verdict", text, parse)
