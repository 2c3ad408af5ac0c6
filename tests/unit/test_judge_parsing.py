"""Reading judge replies: tolerant of how models write, and never a score the reply does not hold."""

import math

import pytest

from tools.judge.judge import _Half, _judgment, parse_scores, scores_from
from tools.judge.prompts import JUDGE_PROMPT_VERSION, quality_prompt, semantic_prompt
from tools.replies.parsing import ReplyParseError

GOOD = [
    (
        "tagged JSON",
        'The edit is clean.\n<answer>{"scores": [8, 6], "reasoning": "sky changed"}</answer>',
        (8.0, 6.0),
        "sky changed",
    ),
    ("bare JSON after prose", 'Looks fine overall.\n{"scores": [9, 4], "reasoning": "blurry"}', (9.0, 4.0), "blurry"),
    ("python literal dict", "<answer>{'scores': [7, 10], 'reasoning': 'good',}</answer>", (7.0, 10.0), "good"),
    ("scores as strings", '<answer>{"scores": ["7", " 3.5 "], "reasoning": "r"}</answer>', (7.0, 3.5), "r"),
    ("fenced, no tag", '```json\n{"scores": [0, 10], "reasoning": "nothing done"}\n```', (0.0, 10.0), "nothing done"),
    ("VIEScore key", '<answer>{"score": [5, 5], "reasoning": "meh"}</answer>', (5.0, 5.0), "meh"),
    (
        "reasoning from the prose",
        'Hands look wrong.<answer>{"scores": [6, 2]}</answer>',
        (6.0, 2.0),
        "Hands look wrong.",
    ),
    (
        "think tags",
        '<think>Check fingers.</think><answer>{"scores": [10, 9.5]}</answer>',
        (10.0, 9.5),
        "Check fingers.",
    ),
    (
        "example in reasoning, answer wins",
        'Format: {"scores": [1, 1]}.\n<answer>{"scores": [8, 7], "reasoning": "ok"}</answer>',
        (8.0, 7.0),
        "ok",
    ),
]

BAD = [
    ("out of range high", '<answer>{"scores": [11, 6]}</answer>', "schema"),
    ("out of range low", '<answer>{"scores": [8, -1]}</answer>', "schema"),
    ("not a number", '<answer>{"scores": ["high", 6]}</answer>', "schema"),
    ("a fraction string", '<answer>{"scores": ["7/10", 6]}</answer>', "schema"),
    ("boolean", '<answer>{"scores": [true, 6]}</answer>', "schema"),
    ("null score", '<answer>{"scores": [null, 6]}</answer>', "schema"),
    ("NaN", '<answer>{"scores": [NaN, 6]}</answer>', "schema"),
    ("one score", '<answer>{"scores": [8]}</answer>', "schema"),
    ("three scores", '<answer>{"scores": [8, 6, 7]}</answer>', "schema"),
    ("missing key", '<answer>{"edit": 8, "over": 6}</answer>', "schema"),
    ("scores as an object", '<answer>{"scores": {"a": 8, "b": 6}}</answer>', "schema"),
    ("truncated", '<answer>{"scores": [8, ', "truncated"),
    ("truncated in think", "<think>The edit looks like an 8 for", "truncated"),
    ("prose only", "I would give it an eight for success and a six for over-editing.", "no_answer"),
    ("empty", "", "no_answer"),
    ("a list, no object", "<answer>[8, 6]</answer>", "not_an_object"),
    ("broken syntax", "<answer>{scores: [8 6]]}</answer>", "syntax"),
]


@pytest.mark.parametrize("reply,pair,reasoning", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_replies_give_their_scores(reply, pair, reasoning):
    assert parse_scores(reply) == (pair, reasoning)


@pytest.mark.parametrize("reply,reason", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_unusable_replies_fail_with_a_reason_and_no_score(reply, reason):
    with pytest.raises(ReplyParseError) as caught:
        parse_scores(reply)
    assert caught.value.reason == reason
    assert caught.value.reply == reply
    assert str(caught.value)


def test_scores_combine_by_min_and_geometric_mean():
    assert scores_from([8, 6], [9, 4]) == (6.0, 4.0, math.sqrt(24))
    assert scores_from([0, 10], [10, 10]) == (0.0, 10.0, 0.0)
    assert scores_from(None, [9, 4]) == (None, 4.0, None)
    assert scores_from(None, None) == (None, None, None)
    with pytest.raises(ValueError):
        scores_from([8, -0.5], [9, 4])


def test_a_failed_half_leaves_overall_empty_and_says_why():
    good = _Half(scores=[8.0, 6.0], reasoning="fine")
    bad = _Half.failure("truncated", "the reply ends before the object closes", ["{"])
    judged = _judgment(good, bad, cached=False, model_name="m", version="v")
    assert (judged.sc, judged.pq, judged.overall) == (6.0, None, None)
    assert (judged.naturalness, judged.artifacts) == (None, None)
    assert not judged.ok and judged.reason == "truncated"
    assert judged.error.startswith("perceptual quality: [truncated]")


def test_prompts_name_their_scores_and_the_reply_format():
    edit = semantic_prompt("make the sky {purple}", from_scratch=False)
    scratch = semantic_prompt("a red cube", from_scratch=True)
    assert "make the sky {purple}" in edit and "from scratch" not in edit
    assert "from scratch" in scratch and "blank white canvas" in scratch
    for text in (edit, scratch):
        assert '<answer>{"scores": [EDIT_SUCCESS, OVER_EDITING]' in text
    assert '<answer>{"scores": [NATURALNESS, ARTIFACTS]' in quality_prompt()
    assert JUDGE_PROMPT_VERSION
