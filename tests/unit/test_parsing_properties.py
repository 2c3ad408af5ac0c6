"""Property tests for the reply parsers: whatever a model writes, ``parse_plan`` and
``parse_verdict`` either return a contract-valid result or raise their typed error with a known
reason code — and a valid reply, however it is dressed, comes back exactly."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tools.replies.parsing import MAX_REPLY_CHARS, REASONS, PlanParseError, VerdictParseError, parse_plan, parse_verdict
from tools.replies.schemas import PLAN_REGEX, VERDICT_REGEX

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FAST, max_examples=30)


def outcome(parse, error, reply):
    """The parse result, or the reason code of the typed error. Anything else fails the test."""
    try:
        return parse(reply)
    except error as exc:
        assert exc.reason in REASONS and exc.reason != "internal", exc
        assert exc.reply is reply
        return exc.reason


# --------------------------------------------------------------------------- valid objects


def _usable(text: str) -> bool:
    # A field that itself spells a reply tag ("<ANSWER>") can change which block the reader takes,
    # so the reason reported for a broken plan may differ (a known edge of the tolerant reader).
    return (
        bool(text)
        and text == text.strip()
        and text.lower() not in ("null", "none")
        and not any(tag in text.lower() for tag in ("<answer", "</answer", "<think", "</think"))
    )


field_text = st.text(max_size=30).filter(_usable)
reasoning_text = st.text(alphabet=st.characters(blacklist_characters="<"), max_size=80)


@st.composite
def plans(draw):
    first = draw(st.integers(1, 4))
    steps = [
        {
            "step_number": first + i,
            "step_name": draw(field_text),
            "instruction": draw(st.none() | field_text),
            "prompt": draw(st.none() | field_text),
            "auxiliary_text": draw(st.none() | field_text),
        }
        for i in range(draw(st.integers(1, 4)))
    ]
    return {"execution_plan": steps}


@st.composite
def verdicts(draw):
    success = draw(st.booleans())
    refine = draw(st.just("") | field_text) if success else draw(field_text)
    return {"previous_step_success": success, "refine_prompt": refine}


def _with_trailing_comma(obj) -> str:
    text = json.dumps(obj, indent=1)
    return text[:-2] + ",\n}"


ANSWER_STYLES = {
    "json": json.dumps,
    "json_ascii_indented": lambda o: json.dumps(o, indent=2, ensure_ascii=True),
    "python": repr,
    "fenced": lambda o: "```json\n" + json.dumps(o, indent=2, ensure_ascii=False) + "\n```",
    "trailing_comma": _with_trailing_comma,
}

# (template, whether the reasoning is returned)
WRAPPERS = {
    "tags": ("<think>{r}</think><answer>{a}</answer>", True),
    "spaced": ("<think>\n{r}\n</think>\n\n<answer>\n{a}\n</answer>\n", True),
    "no_open_think": ("{r}</think>\n\n<answer>{a}</answer>", True),
    "no_close_answer": ("<think>{r}</think><answer>{a}", True),
    "no_close_think": ("<think>{r}\n<answer>{a}</answer>", True),
    "prose_no_answer_tag": ("<think>{r}</think>\nHere is the result:\n{a}\nHope this helps.", True),
    "bare": ("{a}", False),
}


def render(obj, reasoning, style, wrapper) -> tuple[str, str]:
    template, keeps_reasoning = WRAPPERS[wrapper]
    reply = template.replace("{a}", ANSWER_STYLES[style](obj)).replace("{r}", reasoning)
    return reply, reasoning.strip() if keeps_reasoning else ""


styles = st.sampled_from(sorted(ANSWER_STYLES))
wrappers = st.sampled_from(sorted(WRAPPERS))


@FAST
@given(plans(), reasoning_text, styles, wrappers)
def test_valid_plans_round_trip(plan, reasoning, style, wrapper):
    reply, expected_reasoning = render(plan, reasoning, style, wrapper)
    assert parse_plan(reply) == (expected_reasoning, plan["execution_plan"])


@FAST
@given(verdicts(), reasoning_text, styles, wrappers)
def test_valid_verdicts_round_trip(verdict, reasoning, style, wrapper):
    reply, expected_reasoning = render(verdict, reasoning, style, wrapper)
    assert parse_verdict(reply) == (expected_reasoning, verdict["previous_step_success"], verdict["refine_prompt"])


# --------------------------------------------------------------------------- mutations


@settings(FAST, max_examples=15)
@given(st.one_of(plans(), verdicts()), reasoning_text, styles)
def test_every_truncation_is_reported_never_completed(obj, reasoning, style):
    """Cut the reply at every position: each prefix is either the same answer (only closing
    tags were lost) or a typed error; never a different answer."""
    is_plan = "execution_plan" in obj
    reply, _ = render(obj, reasoning, style, "tags")
    parse, error = (parse_plan, PlanParseError) if is_plan else (parse_verdict, VerdictParseError)
    full = parse(reply)
    for cut in range(len(reply)):
        result = outcome(parse, error, reply[:cut])
        if not isinstance(result, str):
            assert result[1:] == full[1:], (cut, reply[:cut])


@FAST
@given(st.one_of(plans(), verdicts()), st.data())
def test_random_edits_give_a_result_or_a_typed_error(obj, data):
    reply, _ = render(obj, "", data.draw(styles), data.draw(wrappers))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(reply)))
        if data.draw(st.booleans()) and at < len(reply):
            reply = reply[:at] + reply[at + 1 :]
        else:
            reply = reply[:at] + data.draw(st.text(min_size=1, max_size=3)) + reply[at:]
    plan = outcome(parse_plan, PlanParseError, reply)
    if not isinstance(plan, str):
        assert plan[1] and all(isinstance(s["step_number"], int) for s in plan[1])
    verdict = outcome(parse_verdict, VerdictParseError, reply)
    if not isinstance(verdict, str):
        assert isinstance(verdict[1], bool) and isinstance(verdict[2], str)
        assert verdict[1] or verdict[2]


@FAST
@given(st.one_of(plans(), verdicts()), st.text(min_size=1, max_size=20), styles)
def test_renamed_top_level_key_is_a_schema_error(obj, new_key, style):
    ((old_key, value),) = [(k, v) for k, v in obj.items() if k != "refine_prompt"]
    assume(new_key != old_key)
    renamed = {new_key: value, **{k: v for k, v in obj.items() if k != old_key}}
    reply, _ = render(renamed, "", style, "tags")
    if old_key == "execution_plan":
        assert outcome(parse_plan, PlanParseError, reply) == "schema"
    else:
        assert outcome(parse_verdict, VerdictParseError, reply) == "schema"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
not_a_bool = json_values.filter(
    lambda v: not isinstance(v, bool) and not (isinstance(v, str) and v.strip().lower() in ("true", "false"))
)
not_a_step_number = json_values.filter(
    lambda v: not (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    and not (isinstance(v, str) and v.strip().isdecimal())
)


@FAST
@given(verdicts(), not_a_bool, styles)
def test_wrong_verdict_type_is_a_schema_error(verdict, value, style):
    reply, _ = render({**verdict, "previous_step_success": value}, "", style, "tags")
    assert outcome(parse_verdict, VerdictParseError, reply) == "schema"


@FAST
@given(verdicts(), json_values.filter(lambda v: v is not None and not isinstance(v, str)), styles)
def test_wrong_refine_prompt_type_is_a_schema_error(verdict, value, style):
    reply, _ = render({**verdict, "refine_prompt": value}, "", style, "tags")
    assert outcome(parse_verdict, VerdictParseError, reply) == "schema"


@FAST
@given(plans(), not_a_step_number, st.data())
def test_wrong_plan_types_are_schema_errors(plan, value, data):
    steps = plan["execution_plan"]
    at = data.draw(st.integers(0, len(steps) - 1))
    broken = [dict(s) for s in steps]
    broken[at]["step_number"] = value
    for candidate in (
        {"execution_plan": broken},
        {
            "execution_plan": data.draw(
                json_values.filter(
                    lambda v: not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v)
                )
            )
        },
    ):
        reply, _ = render(candidate, "", data.draw(styles), "tags")
        assert outcome(parse_plan, PlanParseError, reply) == "schema"


# --------------------------------------------------------------------------- adversarial text

FRAGMENTS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<ANSWER>",
    "{",
    "}",
    "[",
    "]",
    '"',
    "'",
    "“",
    "”",
    "‘",
    "’",
    ",",
    ":",
    "\\",
    "\\n",
    "\n",
    "```json",
    "```",
    "#",
    "//",
    "True",
    "false",
    "None",
    "null",
    "execution_plan",
    "previous_step_success",
    "refine_prompt",
    "step_number",
    '"execution_plan": [',
    "'previous_step_success': ",
    "\x00",
    "1e5",
    "-0",
    "NaN",
    " ",
    "𝔘",
]
adversarial = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=60).map("".join)


@settings(FAST, max_examples=400)
@given(st.one_of(st.text(), adversarial))
def test_any_text_gives_a_result_or_a_typed_error(reply):
    outcome(parse_plan, PlanParseError, reply)
    outcome(parse_verdict, VerdictParseError, reply)


@FEW
@given(
    st.integers(33, 200_000),
    st.sampled_from(["[", "{", '{"a": ', "{'a': ["]),
    st.sampled_from(["<answer>@", "<answer>{@}</answer>", "<think>@", "@"]),
)
def test_deep_nesting_is_refused_quickly(depth, opener, frame):
    reply = frame.replace("@", "{" + opener * depth)
    started = time.perf_counter()
    refusals = ("too_deep", "too_large", "truncated", "syntax")
    assert outcome(parse_plan, PlanParseError, reply) in refusals
    assert outcome(parse_verdict, VerdictParseError, reply) in refusals
    assert time.perf_counter() - started < 2


@FEW
@given(st.from_regex(VERDICT_REGEX, fullmatch=True))
def test_whatever_the_verdict_regex_allows_parses(reply):
    assert isinstance(parse_verdict(reply)[1], bool)


@settings(FEW, max_examples=20)
@given(st.from_regex(PLAN_REGEX, fullmatch=True))
def test_whatever_the_plan_regex_allows_parses_or_has_bad_numbering(reply):
    result = outcome(parse_plan, PlanParseError, reply)
    if isinstance(result, str):
        assert result == "schema"
        with pytest.raises(PlanParseError, match="not consecutive"):
            parse_plan(reply)


# --------------------------------------------------------------------------- size

BIG_VERDICT = {"previous_step_success": False, "refine_prompt": "a red hat, " * 12_000}


@pytest.mark.parametrize(
    "reply",
    [
        "<think>"
        + "Look at {the hand}; 'fingers' \"count\"... " * 4_000
        + "</think><answer>"
        + json.dumps(BIG_VERDICT)
        + "</answer>",
        "<think>" + "x" * 150_000 + "</think><answer>" + repr(BIG_VERDICT) + "</answer>",
    ],
)
def test_long_replies_parse_fast(reply):
    assert len(reply) > 100_000
    started = time.perf_counter()
    assert parse_verdict(reply)[1:] == (False, BIG_VERDICT["refine_prompt"].strip())
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    "reply",
    [
        "x" * (MAX_REPLY_CHARS + 1),
        "<answer>{'previous_step_success': False, 'refine_prompt': '" + "y" * 400_000 + "'}</answer>",
        "<answer>{" + "'a': 1, " * 60_000 + "}</answer>",
    ],
)
def test_oversized_replies_are_refused(reply):
    started = time.perf_counter()
    assert outcome(parse_verdict, VerdictParseError, reply) == "too_large"
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("pattern", [PLAN_REGEX, VERDICT_REGEX])
def test_regexes_avoid_constructs_grammar_compilers_reject(pattern):
    assert not re.search(r"\(\?|\\[sSdDwWbB]|[*+?}]\?", pattern)
