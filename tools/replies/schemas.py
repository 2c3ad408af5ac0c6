"""Schemas of the planner and critic answers, for servers that can constrain decoding.

Why: ``tools.replies.parsing`` repairs what it safely can, but a reply constrained at decoding time
cannot be malformed in the first place, and a retry of an 8B VLM call costs seconds. This module
states the two answer contracts (SPEC §2–3) once, as JSON schemas and as regular expressions
over the whole ``<think>…</think><answer>{…}</answer>`` reply, and builds the request arguments
that ask a server to enforce them. Whatever a server enforces, the reply still goes through
``tools.replies.parsing``: the schemas cannot say "step numbers are consecutive" or "a failed verdict
needs a refine prompt" in a way every server honours.

The regexes use a conservative dialect (groups, classes, ``* + ?``, small ``{m,n}``, no
lookaround, no lazy quantifiers, no ``\\s``) so that regex-to-grammar compilers accept them.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from tools.replies.contracts import REFINE_KEY, SUCCESS_KEY

# --------------------------------------------------------------------------- JSON schemas

_NULLABLE_TEXT = {"type": ["string", "null"]}

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "execution_plan": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "step_number": {"type": "integer", "minimum": 1},
                    "step_name": {"type": "string"},
                    "instruction": _NULLABLE_TEXT,
                    "prompt": _NULLABLE_TEXT,
                    "auxiliary_text": _NULLABLE_TEXT,
                },
                "required": ["step_number", "step_name", "instruction", "prompt", "auxiliary_text"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["execution_plan"],
    "additionalProperties": False,
}

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        SUCCESS_KEY: {"type": "boolean"},
        REFINE_KEY: {"type": "string"},
    },
    "required": [SUCCESS_KEY, REFINE_KEY],
    "additionalProperties": False,
}

# --------------------------------------------------------------------------- regexes

_THINK = r"<think>[^<]*</think>\n?"  # reasoning may not hold "<": it cannot fake a closing tag
_CHAR = r'[^"\\\x00-\x1f]'
_ESCAPE = r'\\(["\\/bfnrt]|u[0-9a-fA-F]{4})'
_STRING = rf'"({_CHAR}|{_ESCAPE})*"'
_VISIBLE = r'[^"\\\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
_TEXT = rf'"{_VISIBLE}({_CHAR}|{_ESCAPE})*"'  # starts with a visible character
_NULLABLE = rf"(null|{_STRING})"

_VERDICT = (
    rf'\{{"{SUCCESS_KEY}": '
    rf'(true, "{REFINE_KEY}": {_STRING}|false, "{REFINE_KEY}": {_TEXT})\}}'
)
_STEP = (
    r'\{"step_number": [1-9][0-9]{0,2}, '
    rf'"step_name": {_TEXT}, "instruction": {_NULLABLE}, "prompt": {_NULLABLE}, '
    rf'"auxiliary_text": {_NULLABLE}\}}'
)
_PLAN = rf'\{{"execution_plan": \[{_STEP}(, {_STEP})*\]\}}'

VERDICT_REGEX = rf"{_THINK}<answer>{_VERDICT}</answer>"
"""A whole critic reply; a failed verdict's refine prompt must start with a visible character."""

PLAN_REGEX = rf"{_THINK}<answer>{_PLAN}</answer>"
"""A whole planner reply (step numbers up to 999; the parser checks they are consecutive)."""

# --------------------------------------------------------------------------- request arguments

_SCHEMAS = {"plan": ("interleave_plan", PLAN_SCHEMA), "verdict": ("critic_verdict", VERDICT_SCHEMA)}
_REGEXES = {"plan": PLAN_REGEX, "verdict": VERDICT_REGEX}


def _schema(kind: str, max_steps: int | None) -> dict[str, Any]:
    schema = copy.deepcopy(_SCHEMAS[kind][1])
    if kind == "plan" and max_steps is not None:
        schema["properties"]["execution_plan"]["maxItems"] = max_steps
    return schema


def structured_output_kwargs(
    kind: Literal["plan", "verdict"],
    mode: Literal["json", "json_object", "regex"],
    *,
    legacy_vllm: bool = False,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``ChatOpenAI(...)`` that make the server enforce a reply shape.

    ``ChatOpenAI(base_url=..., model=..., **structured_output_kwargs("verdict", "regex"))``

    * ``mode="json"``: ``{"model_kwargs": {"response_format": {"type": "json_schema", ...}}}``.
      The server constrains the whole reply to the answer object, so there is no ``<think>``
      and no reasoning is kept; ``tools.replies.parsing`` reads the bare object. Supported by vLLM's
      OpenAI server (all recent versions) and by the OpenAI API (``strict`` schemas).
    * ``mode="regex"``: ``{"extra_body": {"structured_outputs": {"regex": ...}}}``, the whole
      think + answer reply. vLLM only: ``structured_outputs`` replaced the ``guided_*`` request
      fields (vllm-project/vllm#22772) and is the only form read since v0.12.0 (#29326). For an
      older vLLM pass ``legacy_vllm=True`` to get ``{"extra_body": {"guided_regex": ...}}``; a
      v0.12+ server ignores that field without an error, so the constraint would silently be
      off. The OpenAI API has no regex mode.
    * ``mode="json_object"``: ``{"model_kwargs": {"response_format": {"type": "json_object",
      "schema": ...}}}``, the same schema in llama.cpp's form: llama-cpp-python's server (0.3.36,
      tested in ``tests/integration/test_real_servers.py``) compiles it to a grammar and answers
      HTTP 500 to ``json_schema``. Like ``json``, the reply is the bare answer object.
    * Other servers (TGI, SGLang, hosted APIs): not verified here; ``--vlm-structured-output
      auto`` tries ``json``, then ``json_object``, then none, moving on at a refusal.

    With a vLLM ``--reasoning-parser`` the constraint applies only after the reasoning, so use
    ``mode="json"`` there: the regex would ask for a second ``<think>``.

    ``max_steps`` (the run's ``max_plan_steps``) becomes the plan schema's ``maxItems`` in the
    ``json`` and ``json_object`` forms: a model that keeps adding steps (SmolLM2 under llama.cpp's
    grammar does, until its budget cuts the reply) must close the plan there. The regex is not
    bounded (a repeated step pattern would make it huge); the parser still checks the limit.
    """
    if kind not in _SCHEMAS:
        raise ValueError(f"kind must be 'plan' or 'verdict', got {kind!r}")
    if mode == "json":
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": _SCHEMAS[kind][0], "schema": _schema(kind, max_steps), "strict": True},
        }
        return {"model_kwargs": {"response_format": response_format}}
    if mode == "json_object":
        return {"model_kwargs": {"response_format": {"type": "json_object", "schema": _schema(kind, max_steps)}}}
    if mode == "regex":
        field = {"guided_regex": _REGEXES[kind]} if legacy_vllm else {"structured_outputs": {"regex": _REGEXES[kind]}}
        return {"extra_body": field}
    raise ValueError(f"mode must be 'json', 'json_object' or 'regex', got {mode!r}")
