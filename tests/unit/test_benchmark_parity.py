"""Parity of our benchmark scorers with the official code, table by table.

Every expected value below was worked out by hand from the official source named above its
table (not from our code): PhoenixZ810/RISEBench gpt_eval.py at ce8cba3 (and its parent for the
old rule), PKU-YuanGroup/WISE vllm_eval.py / calculate_verified.py (d6bfe42) and
WISE_legacy/gpt_eval.py / Calculate.py, zlab-princeton/UEval ueval_eval.py and README (3a5b5ea),
zhengdian1/InterleaveThinker UEval/ueval_klein.py (94c7593). Where we depart on purpose the row
says so (see the README's "Differences from the reference").
"""

import pytest

from evals.benchmarks import rise, ueval, wise
from evals.benchmarks.data import Item
from tools.replies.parsing import ReplyParseError

# --------------------------------------------------------------------------- RISEBench

# calculate_completion: (category, consistency_free, consistency, reasoning, plausibility)
# -> accurate under the 2026-04 rule (ce8cba3) and under the rule before it.
RISE_ACCURACY = [
    ("temporal_reasoning", False, 5, 5, 5, True, True),
    ("temporal_reasoning", False, 5, 5, 4, False, False),
    ("spatial_reasoning", False, 4, 5, 5, False, False),
    # consistency-free: after ce8cba3 reasoning and plausibility decide; before, NaN == 5 fails
    ("causal_reasoning", True, None, 5, 5, True, False),
    ("causal_reasoning", True, None, 5, 4, False, False),
    ("causal_reasoning", True, None, 4, 5, False, False),
    # logical: consistency and reasoning (0/1 verdicts mapped by 4 * min(x, 1) + 1)
    ("logical_reasoning", False, 5, 5, None, True, True),
    ("logical_reasoning", False, 1, 5, None, False, False),
    ("logical_reasoning", False, 5, 1, None, False, False),
]


@pytest.mark.parametrize("category, free, c, r, p, now, before", RISE_ACCURACY)
def test_rise_accuracy_follows_calculate_completion(category, free, c, r, p, now, before):
    scores = {"consistency": c, "reasoning": r, "plausibility": p, "consistency_free": free}
    assert rise.accurate(category, scores, "2026-04") is now
    assert rise.accurate(category, scores, "pre-2026-04") is before


@pytest.mark.parametrize("rule", list(rise.RULES))
def test_an_unscorable_rise_sample_is_never_accurate(rule):
    # No "Final Score" found: every dimension NaN, complete = 0 under both rules.
    assert rise.accurate("temporal_reasoning", None, rule) is False


# calculate_score: 0.3 c + 0.5 r + 0.2 p; consistency-free 0.2 p + 0.8 r; logical 0.3 c + 0.7 r;
# reasoning 1 halves the score, floored at 1.
RISE_SCORE = [
    ("causal_reasoning", 4, 5, 3, 1.2 + 2.5 + 0.6),
    ("temporal_reasoning", 5, 1, 5, (1.5 + 0.5 + 1.0) / 2),
    ("temporal_reasoning", 1, 1, 1, 1.0),
    ("causal_reasoning", None, 5, 4, 0.8 + 4.0),
    ("logical_reasoning", 5, 1, None, (1.5 + 0.7) / 2),
    ("logical_reasoning", 5, 5, None, 5.0),
]


@pytest.mark.parametrize("category, c, r, p, expected", RISE_SCORE)
def test_rise_score_follows_calculate_score(category, c, r, p, expected):
    assert rise.weighted_score(category, c, r, p) == pytest.approx(expected)


def rise_result(category, c, r, p, free=False):
    return (
        Item(f"{category}-{c}{r}{p}", category, {}),
        {
            "scores": {
                "consistency": c,
                "reasoning": r,
                "plausibility": p,
                "consistency_free": free,
                "score": rise.weighted_score(category, c, r, p),
            }
        },
    )


@pytest.mark.parametrize("rule, accuracy, causal", [("2026-04", 100 * 2 / 3, 100.0), ("pre-2026-04", 100 * 1 / 3, 0.0)])
def test_rise_summary_counts_unscorable_samples_in_the_accuracy_denominator(rule, accuracy, causal):
    scored = [rise_result("temporal_reasoning", 5, 5, 5), rise_result("causal_reasoning", None, 5, 5, free=True)]
    unscorable = [(Item("s", "spatial_reasoning", {}), {"status": "judge_failed"})]
    head = rise.summarize(scored, unscorable, rule=rule)["headline"]
    # data['complete'].mean() over 3 rows (the unscorable one is 0); data['score'].mean() skips
    # its NaN: (5 + (0.2 * 5 + 0.8 * 5)) / 2 = 5 -> 25 * (5 - 1) = 100.
    assert head["accuracy"] == pytest.approx(accuracy)
    assert head["causal"] == causal and head["spatial"] == 0.0
    assert head["unscorable"] == 1 and head["items"] == 3
    assert head["score_pct"] == pytest.approx(100.0)


def test_rise_rule_names_the_official_commit():
    bench = rise.benchmark("2026-04")
    assert "ce8cba3" in bench.protocol["scoring_rule"]
    assert "pre-2026-04" in rise.benchmark("pre-2026-04").protocol["scoring_rule"]
    with pytest.raises(ValueError, match="--rise-rule"):
        rise.benchmark("2025")


# --------------------------------------------------------------------------- WISE_Verified

# vllm_eval.extract_scores after the <think> clean-up: re.search(r"\*{0,2}Score\*{0,2}\s*[::]?\s*
# ([01])\b", IGNORECASE), else exactly one bare 0/1 line.
WISE_VERIFIED_REPLIES = [
    ("Score: 1", 1),
    ("score:0", 0),
    ("**Score**: 1", 1),
    ("SCORE 0", 0),
    ("<think>Score: 0</think>\nScore: 1", 1),
    ("</think>Score: 0", 0),
    ("1", 1),
    ("The image is right.\n1\n", 1),
    ("Score: 1. Also Score: 0", 1),  # the first match wins
    ("**Score:** 1", None),  # '**' after the colon is not allowed by the pattern
    ("0\n1", None),  # two bare lines: no fallback
    ("Score: 10", None),  # no word boundary after the digit
    ("Score: 2", None),
    ("I cannot tell.", None),
]


@pytest.mark.parametrize("reply, expected", WISE_VERIFIED_REPLIES)
def test_wise_verified_replies_are_read_like_extract_scores(reply, expected):
    if expected is None:
        with pytest.raises(ReplyParseError):
            wise.parse_verified(reply)
    else:
        assert wise.parse_verified(reply) == expected


# calculate_verified.py's prompt-id ranges.
@pytest.mark.parametrize(
    "prompt_id, name",
    [
        (1, "CULTURE"),
        (400, "CULTURE"),
        (401, "TIME"),
        (520, "TIME"),
        (521, "SPACE"),
        (640, "SPACE"),
        (641, "BIOLOGY"),
        (760, "BIOLOGY"),
        (761, "PHYSICS"),
        (880, "PHYSICS"),
        (881, "CHEMISTRY"),
        (1000, "CHEMISTRY"),
    ],
)
def test_wise_verified_categories_follow_calculate_verified(prompt_id, name):
    assert wise.category(prompt_id, wise.VERIFIED) == name


def wise_result(prompt_id, value, protocol=wise.VERIFIED):
    item = Item(str(prompt_id), wise.category(prompt_id, protocol), {})
    return item, {"scores": {"score": value, "wiscore": float(value)}}


# The README's leaderboard rows (category scores -> Overall), Overall = 0.40 CULTURE + 0.12 x 5.
LEADERBOARD = [
    ("NanoBanana-Pro", (0.8975, 0.8167, 0.9333, 0.8167, 0.8667, 0.8750), 0.8760),
    ("BAGEL (w/ CoT)", (0.7800, 0.6333, 0.5667, 0.3750, 0.5500, 0.5083), 0.6280),
    ("FLUX.2-klein-9B", (0.4900, 0.3917, 0.5500, 0.3833, 0.4833, 0.2250), 0.4400),
]


@pytest.mark.parametrize("model, categories, overall", LEADERBOARD)
def test_wise_verified_weights_reproduce_the_leaderboard(model, categories, overall):
    weights = [weight for *_, weight in wise.VERIFIED_CATEGORIES]
    assert sum(w * c for w, c in zip(weights, categories)) == pytest.approx(overall, abs=5e-4)


def test_wise_verified_overall_needs_every_item_scored():
    ids = (1, 2, 401, 521, 641, 761, 881)
    values = (1, 0, 1, 0, 1, 1, 0)
    scored = [wise_result(i, v) for i, v in zip(ids, values)]
    head = wise.summarize(scored, protocol=wise.VERIFIED)["headline"]
    assert head["culture"] == 0.5 and head["chemistry"] == 0.0
    assert head["overall"] == pytest.approx(0.4 * 0.5 + 0.12 * (1 + 0 + 1 + 1 + 0))
    # calculate_verified.py refuses an overall while a prompt id has no score.
    missing = [(Item("3", "CULTURE", {}), {"status": "judge_failed"})]
    head = wise.summarize(scored, missing, protocol=wise.VERIFIED)["headline"]
    assert head["overall"] is None and head["unscorable"] == 1


# --------------------------------------------------------------------------- WISE legacy

# WISE_legacy/gpt_eval.extract_scores: "Name: d" lines (any case, optional **), else the first
# three bare 0-2 lines; our departure: a digit outside 0-2 is refused.
WISE_LEGACY_REPLIES = [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
    ("**Consistency**: 1\n**Realism**: 2\n**aesthetic quality**: 2", (1, 2, 2)),
    ("2\n1\n0\n", (2, 1, 0)),
    ("Consistency: 1\nRealism: 1", None),  # a missing key: the official script asks again
    ("Consistency: 5\nRealism: 1\nAesthetic Quality: 0", None),  # departure: outside 0-2
]


@pytest.mark.parametrize("reply, expected", WISE_LEGACY_REPLIES)
def test_wise_legacy_replies_are_read_like_its_extract_scores(reply, expected):
    if expected is None:
        with pytest.raises(ReplyParseError):
            wise.parse_legacy(reply)
    else:
        assert tuple(wise.parse_legacy(reply).values()) == expected


@pytest.mark.parametrize("scores, expected", [((2, 2, 2), 1.0), ((2, 1, 0), 0.8), ((0, 2, 2), 0.3), ((1, 0, 1), 0.4)])
def test_wise_legacy_wiscore_follows_calculate(scores, expected):
    assert wise.wiscore(*scores) == pytest.approx(expected)


# --------------------------------------------------------------------------- UEval

# normalize_criteria_value + criteria_value_to_bool: met only for true or "true"/"yes"/"y"/"1".
UEVAL_VERDICTS = [
    ('{"criteria_met": true}', True),
    ('{"criteria_met": "Yes"}', True),
    ('{"criteria_met": " y "}', True),
    ('{"criteria_met": "1"}', True),
    ('```json\n{"criteria_met": "TRUE", "explanation": "x"}\n```', True),
    ('{"criteria_met": false}', False),
    ('{"criteria_met": "no"}', False),
    ('{"criteria_met": "not sure"}', False),
    ('{"criteria_met": "Unknown"}', False),
    ('{"criteria_met": null}', False),
    ('{"explanation": "no verdict given"}', False),  # parsed.get("criteria_met") is None
    ('{"criteria_met": 1}', False),  # a number is not a bool
    ('{"criteria_met": "partially"}', False),
]


@pytest.mark.parametrize("reply, met", UEVAL_VERDICTS)
def test_ueval_verdicts_count_as_criteria_value_to_bool_counts_them(reply, met):
    assert ueval.is_met(ueval.criteria_met(reply)) is met


def test_a_ueval_reply_without_json_is_asked_again():
    with pytest.raises(ReplyParseError):
        ueval.criteria_met("The answer looks fine to me.")


def answer(value):
    return {
        "value": value,
        "error": None,
        "reason": None,
        "requests": 1,
        "input_tokens": 1,
        "output_tokens": 1,
        "cached": False,
    }


def ueval_item(id_, task, texts, images):
    return Item(
        id_,
        task,
        {
            "prompt": "p",
            "question_type": ueval.question_type(task),
            "text_rubrics": [f"t{i}" for i in range(texts)],
            "image_rubrics": [f"i{i}" for i in range(images)],
        },
    )


def test_ueval_rates_and_the_leaderboard_average():
    output = {"text": "t", "images": [{"sha256": "a"}], "inputs": []}
    # compute_score: met / total, "not sure" and null in the total.
    art = ueval_item("a", "art", 3, 2)
    art_result = ueval.score(art, output, [answer(v) for v in (True, "not sure", None, False, True)])
    assert art_result["scores"]["text_rate"] == pytest.approx(1 / 3)
    assert art_result["scores"]["image_rate"] == 0.5
    space = ueval_item("s", "space", 2, 2)
    space_result = ueval.score(space, output, [answer(v) for v in (True, True, False, "no")])
    no_image_rubrics = ueval_item("n", "space", 1, 0)
    none_result = ueval.score(no_image_rubrics, output, [answer(False)])
    assert none_result["scores"]["image_rate"] is None  # not counted in image_avg_rate
    summary = ueval.summarize([(art, art_result), (space, space_result), (no_image_rubrics, none_result)])
    head = summary["headline"]
    # compute_summary: text_avg over 3 items (1/3, 1, 0), image_avg over 2 (0.5, 0).
    assert head["text_avg_rate"] == pytest.approx(100 * (1 / 3 + 1 + 0) / 3)
    assert head["image_avg_rate"] == pytest.approx(100 * 0.25)
    # Ours, as the leaderboard's Avg: mean over tasks of (text avg + image avg) / 2.
    art_task = (1 / 3 + 0.5) / 2
    space_task = ((1 + 0) / 2 + 0.0) / 2
    assert head["task_avg"] == pytest.approx(100 * (art_task + space_task) / 2)


# README leaderboard rows: the eight task columns and the "Avg" column.
UEVAL_LEADERBOARD = [
    ("Janus-Pro", (21.0, 31.0, 37.4, 15.2, 26.4, 23.0, 17.6, 11.5), 22.9),
    ("Gemini-2.5-Flash", (78.0, 74.0, 66.4, 71.6, 66.6, 63.0, 58.2, 50.0), 66.0),
    ("GPT-5-Thinking", (84.0, 78.0, 67.8, 51.9, 67.8, 63.8, 57.0, 61.4), 66.4),
    ("Emu3.5", (59.1, 57.4, 41.1, 31.6, 59.3, 62.0, 37.0, 45.4), 49.1),
]


@pytest.mark.parametrize("model, tasks, avg", UEVAL_LEADERBOARD)
def test_the_ueval_leaderboard_average_is_the_mean_over_tasks(model, tasks, avg):
    # The columns are rounded to 0.1, so the mean of them is within 0.1 of the printed Avg.
    assert sum(tasks) / len(tasks) == pytest.approx(avg, abs=0.1)


@pytest.mark.parametrize(
    "task, kind",
    [
        ("Space", "closed"),
        ("textbook", "closed"),
        ("diagram", "closed"),
        ("paper", "closed"),
        ("art", "open"),
        ("Life", "open"),
        ("cooking", "open"),
        ("", "open"),
    ],
)
def test_ueval_open_and_closed_tasks_follow_get_question_type_from_task(task, kind):
    assert ueval.question_type(task) == kind


# ueval_klein.py: per step auxiliary_text if truthy and not "None", else instruction; joined.
KLEIN_STEPS = [
    (
        [
            {"auxiliary_text": None, "instruction": "Cut the paper."},
            {"auxiliary_text": "Fold it twice.", "instruction": "ignored"},
        ],
        "Cut the paper.Fold it twice.",
    ),
    ([{"auxiliary_text": "None", "instruction": "A."}, {"auxiliary_text": "", "instruction": "B."}], "A.B."),
]


@pytest.mark.parametrize("steps, text", KLEIN_STEPS)
def test_the_text_answer_is_laid_out_as_the_klein_script_lays_it_out(steps, text):
    assert ueval.klein_text(steps) == text


def test_the_request_drops_the_phrase_the_klein_script_drops():
    item = Item("1", "art", {"prompt": "Show how to paint a tree both visually and textually."})
    assert ueval.request(item) == ("Show how to paint a tree.", [])


# gpt_eval.extract: the numbers after the first "Final Score" that has any, else "Final Scores".
RISE_FINAL_SCORES = [
    ("Reasoning...\n**Final Score:** **4**", 4),
    ("Final Score: 3\nFinal Score: 5", 3),
    ("final score 2", 2),
    ("**Final Scores:** 1", 1),
    ("The score is 5.", None),
    ("Final Score: none", None),
]


@pytest.mark.parametrize("reply, expected", RISE_FINAL_SCORES)
def test_rise_final_scores_are_found_as_extract_finds_them(reply, expected):
    assert rise.final_score(reply) == expected
