"""Planner and critic replies as real models write them (SPEC §2-3: parse tolerantly)."""

import pytest

from tools.parsing import PlanParseError, VerdictParseError, parse_plan, parse_verdict

STEP = ('{"step_number": 1, "step_name": "Start", "instruction": "A sheet", "prompt": "a sheet", '
        '"auxiliary_text": null}')


@pytest.mark.parametrize("reply", [
    f'<think>plan</think><answer>{{"execution_plan": [{STEP}]}}</answer>',
    f'<think>plan</think>\n<answer>\n```json\n{{"execution_plan": [{STEP}],}}\n```\n</answer>',
    f'<think>plan</think><answer>{{"execution_plan": [{STEP}]}}',  # closing tag lost
    f'{{"execution_plan": [{STEP}]}}',  # bare JSON
    "<answer>{'execution_plan': [{'step_number': '1', 'step_name': 'Start', 'instruction': 'A sheet',"
    " 'prompt': 'a sheet', 'auxiliary_text': None}]}</answer>",  # Python literal, string number
])
def test_plan_variants_parse(reply):
    _, steps = parse_plan(reply)
    assert steps == [{"step_number": 1, "step_name": "Start", "instruction": "A sheet",
                      "prompt": "a sheet", "auxiliary_text": None}]


@pytest.mark.parametrize("reply, problem", [
    ("<think>hmm</think>", "no {...} object"),
    ('<answer>{"execution_plan": []}</answer>', "non-empty list"),
    ('<answer>{"plan": []}</answer>', "execution_plan"),
    ('<answer>{"execution_plan": [{"step_number": 1, "prompt": "a"}, {"step_number": 3, '
     '"prompt": "b"}]}</answer>', "not consecutive"),
    ('<answer>{"execution_plan": [{"step_number": 1, "prompt": 7}]}</answer>', "'prompt' must be"),
])
def test_bad_plans_raise_with_reason_and_raw_reply(reply, problem):
    with pytest.raises(PlanParseError, match=problem) as info:
        parse_plan(reply)
    assert info.value.reply == reply


@pytest.mark.parametrize("reply, success, refine", [
    ('<think>ok</think><answer>{"previous_step_success": true, "refine_prompt": "p"}</answer>', True, "p"),
    ("<think>bad</think><answer>{'previous_step_success': False, 'refine_prompt': 'q'}</answer>",
     False, "q"),
    ('<answer>{"previous_step_success": "false", "refine_prompt": "q"}</answer>', False, "q"),
    ('<think>fine</think><answer>{"previous_step_success": true}</answer>', True, ""),
])
def test_verdict_variants_parse(reply, success, refine):
    assert parse_verdict(reply)[1:] == (success, refine)


@pytest.mark.parametrize("reply", [
    "<think>the image looks", # cut off by the token limit
    '<answer>{"previous_step_success": "maybe", "refine_prompt": "q"}</answer>',
    '<answer>{"previous_step_success": false, "refine_prompt": ""}</answer>',  # fail with no fix
    '<answer>{"refine_prompt": "q"}</answer>',
])
def test_unusable_verdicts_raise(reply):
    with pytest.raises(VerdictParseError):
        parse_verdict(reply)
