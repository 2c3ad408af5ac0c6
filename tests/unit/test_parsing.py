"""Planner and critic replies as real models write them (SPEC §2-3: parse tolerantly)."""

import json
import re

import pytest

from evals.perf.parse_corpus import check, load_corpus
from tools.replies.parsing import REASONS, PlanParseError, VerdictParseError, parse_plan, parse_verdict
from tools.replies.schemas import PLAN_REGEX, PLAN_SCHEMA, VERDICT_REGEX, VERDICT_SCHEMA, structured_output_kwargs

STEP = '{"step_number": 1, "step_name": "Start", "instruction": "A sheet", "prompt": "a sheet", "auxiliary_text": null}'


@pytest.mark.parametrize(
    "reply",
    [
        f'<think>plan</think><answer>{{"execution_plan": [{STEP}]}}</answer>',
        f'<think>plan</think>\n<answer>\n```json\n{{"execution_plan": [{STEP}],}}\n```\n</answer>',
        f'<think>plan</think><answer>{{"execution_plan": [{STEP}]}}',  # closing tag lost
        f'{{"execution_plan": [{STEP}]}}',  # bare JSON
        "<answer>{'execution_plan': [{'step_number': '1', 'step_name': 'Start', 'instruction': 'A sheet',"
        " 'prompt': 'a sheet', 'auxiliary_text': None}]}</answer>",  # Python literal, string number
    ],
)
def test_plan_variants_parse(reply):
    _, steps = parse_plan(reply)
    assert steps == [
        {"step_number": 1, "step_name": "Start", "instruction": "A sheet", "prompt": "a sheet", "auxiliary_text": None}
    ]


@pytest.mark.parametrize(
    "reply, problem",
    [
        ("<think>hmm</think>", "no {...} object"),
        ('<answer>{"execution_plan": []}</answer>', "non-empty list"),
        ('<answer>{"plan": []}</answer>', "execution_plan"),
        (
            '<answer>{"execution_plan": [{"step_number": 1, "prompt": "a"}, {"step_number": 3, '
            '"prompt": "b"}]}</answer>',
            "not consecutive",
        ),
        ('<answer>{"execution_plan": [{"step_number": 1, "prompt": 7}]}</answer>', "'prompt' must be"),
    ],
)
def test_bad_plans_raise_with_reason_and_raw_reply(reply, problem):
    with pytest.raises(PlanParseError, match=problem) as info:
        parse_plan(reply)
    assert info.value.reply == reply


@pytest.mark.parametrize(
    "reply, success, refine",
    [
        ('<think>ok</think><answer>{"previous_step_success": true, "refine_prompt": "p"}</answer>', True, "p"),
        ("<think>bad</think><answer>{'previous_step_success': False, 'refine_prompt': 'q'}</answer>", False, "q"),
        ('<answer>{"previous_step_success": "false", "refine_prompt": "q"}</answer>', False, "q"),
        ('<think>fine</think><answer>{"previous_step_success": true}</answer>', True, ""),
    ],
)
def test_verdict_variants_parse(reply, success, refine):
    assert parse_verdict(reply)[1:] == (success, refine)


@pytest.mark.parametrize(
    "reply",
    [
        "<think>the image looks",  # cut off by the token limit
        '<answer>{"previous_step_success": "maybe", "refine_prompt": "q"}</answer>',
        '<answer>{"previous_step_success": false, "refine_prompt": ""}</answer>',  # fail with no fix
        '<answer>{"refine_prompt": "q"}</answer>',
    ],
)
def test_unusable_verdicts_raise(reply):
    with pytest.raises(VerdictParseError):
        parse_verdict(reply)


# --------------------------------------------------------------------------- reason codes


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("<think>the image looks", "truncated"),
        ('<think>ok</think><answer>{"previous_step_success": false, "refine_prompt": "a hand wi', "truncated"),
        ("<think>ok</think>", "no_answer"),
        ("<think>ok</think><answer>  </answer>", "no_answer"),
        ("<think>ok</think><answer>The edit is fine.</answer>", "not_an_object"),
        ("<think>ok</think><answer>{previous_step_success = true}</answer>", "syntax"),
        ('<answer>{"success": true}</answer>', "schema"),
        ("<answer>{'previous_step_success': 1, 'refine_prompt': 'x'}</answer>", "schema"),
        ('<answer>{"a": ' + "[" * 100 + "</answer>", "too_deep"),
    ],
)
def test_failures_carry_a_reason_code(reply, reason):
    with pytest.raises(VerdictParseError) as info:
        parse_verdict(reply)
    assert info.value.reason == reason and info.value.reason in REASONS
    assert f"({reason})" in str(info.value)


def test_answer_is_never_taken_from_the_reasoning():
    reply = (
        '<think>A passing verdict would be {"previous_step_success": true, "refine_prompt": ""}'
        '</think><answer>{"previous_step_success": false, "refine_prompt": "fix the hand"}</answer>'
    )
    assert parse_verdict(reply)[1:] == (False, "fix the hand")
    cut = reply[: reply.index("fix")]
    with pytest.raises(VerdictParseError, match="truncated"):
        parse_verdict(cut)


def test_non_string_input_is_a_typed_error():
    with pytest.raises(PlanParseError) as info:
        parse_plan(None)  # type: ignore[arg-type]
    assert info.value.reason == "not_text"


# --------------------------------------------------------------------------- corpus

CORPUS = load_corpus()


def test_corpus_is_big_and_labelled():
    assert len(CORPUS) >= 40
    assert {e["expect"] for e in CORPUS} <= {"ok", *REASONS}
    assert sum(e["expect"] == "ok" for e in CORPUS) >= 40


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_corpus_entry_parses_as_labelled(entry):
    result = check(entry)
    assert result["agrees"], result


# --------------------------------------------------------------------------- structured outputs

PLAN = {
    "execution_plan": [
        {
            "step_number": 1,
            "step_name": "Sheet",
            "instruction": "A sheet.",
            "prompt": "a sheet of paper",
            "auxiliary_text": None,
        },
        {
            "step_number": 2,
            "step_name": "Crane",
            "instruction": None,
            "prompt": "fold it into a crane",
            "auxiliary_text": "Fold along the creases.",
        },
    ]
}
VERDICT = {"previous_step_success": False, "refine_prompt": 'a hand with "five" fingers'}


@pytest.mark.parametrize("kind, obj, parse", [("plan", PLAN, parse_plan), ("verdict", VERDICT, parse_verdict)])
def test_regex_accepts_a_valid_reply_that_then_parses(kind, obj, parse):
    reply = f"<think>checked</think>\n<answer>{json.dumps(obj)}</answer>"
    pattern = {"plan": PLAN_REGEX, "verdict": VERDICT_REGEX}[kind]
    assert re.fullmatch(pattern, reply)
    parse(reply)
    assert not re.fullmatch(pattern, reply.replace("<answer>", "<answer>\n```json\n"))


def test_verdict_regex_refuses_a_failure_without_a_fix():
    reply = '<think>x</think><answer>{"previous_step_success": false, "refine_prompt": " "}</answer>'
    assert not re.fullmatch(VERDICT_REGEX, reply)


@pytest.mark.parametrize(
    "schema, good, bad",
    [
        (PLAN_SCHEMA, PLAN, {"execution_plan": [{**PLAN["execution_plan"][0], "step_number": "1"}]}),
        (VERDICT_SCHEMA, VERDICT, {"previous_step_success": "false", "refine_prompt": "x"}),
    ],
)
def test_json_schemas_accept_the_contract(schema, good, bad):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid(good) and not validator.is_valid(bad)


def test_structured_output_kwargs_reach_the_server():
    """The kwargs go into ChatOpenAI and arrive in the HTTP request as vLLM expects them."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    from tools.doubles.scripted_chat import ScriptedChatServer

    bodies = []

    def respond(body):
        bodies.append(body)
        return json.dumps(VERDICT)  # json mode: the bare answer object, no <think>

    with ScriptedChatServer(respond) as server:
        for mode in ("json", "regex"):
            model = ChatOpenAI(
                base_url=server.base_url,
                api_key="x",
                model="critic",
                max_retries=0,
                **structured_output_kwargs("verdict", mode),
            )
            reply = model.invoke([HumanMessage("judge")]).content
            assert parse_verdict(reply)[1:] == (False, VERDICT["refine_prompt"])
    assert bodies[0]["response_format"]["json_schema"]["schema"] == VERDICT_SCHEMA
    assert bodies[1]["structured_outputs"] == {"regex": VERDICT_REGEX}
    assert structured_output_kwargs("plan", "regex", legacy_vllm=True) == {"extra_body": {"guided_regex": PLAN_REGEX}}
    with pytest.raises(ValueError, match="mode"):
        structured_output_kwargs("plan", "grammar")  # type: ignore[arg-type]


def test_errors_survive_pickling():
    import pickle

    with pytest.raises(VerdictParseError) as info:
        parse_verdict("<think>cut off")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), copy.reason, copy.reply, str(copy)) == (
        VerdictParseError,
        "truncated",
        "<think>cut off",
        str(info.value),
    )
