"""The benchmark scoring rules, offline: what a judge reply becomes, how items and configurations
are scored (UEval rates, WiScore, RISEBench score and accuracy), and how bad data files and
configurations are refused with a message that says what to fix."""

import json

import pytest

from evals.benchmarks import rise, store, ueval, wise
from evals.benchmarks.configs import parse_config
from evals.benchmarks.data import DataFormatError, Item
from tools.replies.parsing import ReplyParseError


def answer(value=None, error=None, reason=None):
    return {
        "value": value,
        "error": error,
        "reason": reason,
        "requests": 1,
        "input_tokens": 5,
        "output_tokens": 5,
        "cached": False,
    }


# --------------------------------------------------------------------------- UEval


def ueval_item(task="art", texts=3, images=2):
    return Item(
        "x",
        task,
        {
            "prompt": "p",
            "question_type": ueval.question_type(task),
            "text_rubrics": [f"t{i}" for i in range(texts)],
            "image_rubrics": [f"i{i}" for i in range(images)],
        },
    )


def test_ueval_rates_count_only_true_as_met():
    item = ueval_item()
    output = {"text": "t", "images": [{"sha256": "a"}], "inputs": []}
    result = ueval.score(
        item, output, [answer(True), answer(False), answer("not sure"), answer(True), answer("not sure")]
    )
    assert result["status"] == "scored"
    assert result["scores"]["text_rate"] == pytest.approx(1 / 3)
    assert result["scores"]["image_rate"] == 0.5
    assert result["scores"]["score"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert result["scores"]["not_met_unsure"] == 2


def test_an_unreadable_rubric_voids_that_rate_only_and_is_reported():
    item = ueval_item(texts=2, images=1)
    output = {"text": "t", "images": [{"sha256": "a"}], "inputs": []}
    result = ueval.score(item, output, [answer(True), answer(error="no answer tag", reason="no_answer"), answer(True)])
    assert result["status"] == "partial"
    assert result["scores"]["text_rate"] is None and result["scores"]["image_rate"] == 1.0
    assert result["failures"] == [{"question": "text:1", "reason": "no_answer", "error": "no answer tag"}]


def test_an_answer_without_images_fails_every_image_rubric_without_asking():
    item = ueval_item(texts=1, images=2)
    output = {"text": "t", "images": [], "inputs": []}
    assert [q.label for q in ueval.questions(item, output)] == ["text:0"]
    result = ueval.score(item, output, [answer(True)])
    assert result["scores"]["image_rate"] == 0.0 and result["scores"]["text_rate"] == 1.0


def test_closed_tasks_show_the_judge_images_without_the_text_answer():
    output = {"text": "MY ANSWER", "images": [{"sha256": "a"}], "inputs": []}
    closed = ueval.questions(ueval_item("space", texts=0, images=1), output)[0]
    opened = ueval.questions(ueval_item("tech", texts=0, images=1), output)[0]
    assert "MY ANSWER" not in closed.text and "MY ANSWER" in opened.text
    assert closed.images == opened.images == ({"sha256": "a"},)


def test_ueval_summary_is_the_mean_of_text_and_image_averages_and_the_mean_over_tasks():
    def result(text, image):
        return {"scores": {"text_rate": text, "image_rate": image}}

    scored = [
        (ueval_item("space"), result(1.0, 0.5)),
        (ueval_item("art"), result(1 / 3, 1.0)),
        (ueval_item("life"), result(None, 0.5)),
    ]
    summary = ueval.summarize(scored)
    head = summary["headline"]
    assert head["text_avg_rate"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert head["image_avg_rate"] == pytest.approx(100 * 2 / 3)
    assert head["overall"] == pytest.approx((head["text_avg_rate"] + head["image_avg_rate"]) / 2)
    assert summary["by_category"]["space"]["overall"] == pytest.approx(75)
    assert summary["by_category"]["life"]["overall"] == pytest.approx(50)
    assert head["task_avg"] == pytest.approx((75 + 100 * (1 / 3 + 1) / 2 + 50) / 3)
    assert list(summary["by_category"]) == ["space", "art", "life"]


# --------------------------------------------------------------------------- WISE


def test_wise_categories_follow_the_official_prompt_id_ranges():
    assert [wise.category(i) for i in (400, 401, 567, 568, 700, 701, 800, 801, 900, 901)] == [
        "CULTURE",
        "TIME",
        "TIME",
        "SPACE",
        "SPACE",
        "BIOLOGY",
        "BIOLOGY",
        "PHYSICS",
        "PHYSICS",
        "CHEMISTRY",
    ]
    with pytest.raises(ValueError, match="outside 1-1000"):
        wise.category(1001)


@pytest.mark.parametrize(
    "reply",
    [
        '<answer>{"consistency": 3, "realism": 1, "aesthetic_quality": 1}</answer>',
        '<answer>{"consistency": 1.5, "realism": 1, "aesthetic_quality": 1}</answer>',
        '<answer>{"consistency": 1, "realism": 1}</answer>',
        "Consistency: 2\nRealism: 1\nAesthetic Quality: 0",
    ],
)
def test_wise_scores_outside_the_scale_are_refused(reply):
    with pytest.raises(ReplyParseError):
        wise.parse_scores(reply)


def test_wiscore_and_the_weighted_overall():
    assert wise.wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wise.wiscore(1, 0, 2) == pytest.approx(0.45)
    values = {1: (2, 1, 0), 401: (2, 2, 2), 568: (1, 1, 1), 701: (0, 2, 1), 801: (1, 0, 2), 901: (2, 0, 0)}
    scored = []
    for pid, (c, r, a) in values.items():
        scores = {"consistency": c, "realism": r, "aesthetic_quality": a, "wiscore": wise.wiscore(c, r, a)}
        scored.append((Item(str(pid), wise.category(pid), {}), {"scores": scores}))
    head = wise.summarize(scored)["headline"]
    assert head["overall"] == pytest.approx(0.4 * 0.8 + 0.167 * 1.0 + 0.133 * 0.5 + 0.1 * 0.25 + 0.1 * 0.45 + 0.1 * 0.7)
    assert wise.summarize(scored[1:])["headline"]["overall"] is None  # no CULTURE item yet


def test_a_failed_wise_judgment_is_a_failure_not_a_score():
    item = Item("1", "CULTURE", {"prompt": "p", "explanation": "e"})
    result = wise.score(item, {"images": [{}]}, [answer(error="bad", reason="syntax")])
    assert result["status"] == "judge_failed" and result["scores"] == {}
    assert wise.score(item, {"images": []}, [])["status"] == "judge_failed"


# --------------------------------------------------------------------------- RISEBench


def test_rise_score_follows_the_official_weights_and_the_reasoning_penalty():
    assert rise.weighted_score("temporal_reasoning", 4, 5, 3) == pytest.approx(4.3)
    assert rise.weighted_score("spatial_reasoning", None, 4, 5) == pytest.approx(4.2)
    assert rise.weighted_score("logical_reasoning", 5, 5, None) == pytest.approx(5.0)
    assert rise.weighted_score("logical_reasoning", 5, 1, None) == pytest.approx(1.1)
    assert rise.weighted_score("causal_reasoning", 1, 1, 1) == pytest.approx(1.0)


def test_rise_binary_verdicts_map_to_the_ends_of_the_scale():
    assert rise.read_binary('<answer>{"score": 1}</answer>') == 5
    assert rise.read_binary('<answer>{"score": "0"}</answer>') == 1
    assert rise.read_five('<answer>{"score": 4}</answer>') == 4
    for bad in ('<answer>{"score": 2}</answer>', "**Final Score:** 4"):
        with pytest.raises(ReplyParseError):
            rise.read_binary(bad)
    with pytest.raises(ReplyParseError):
        rise.read_five('<answer>{"score": 0}</answer>')


def rise_item(category, consistency_free=False):
    return Item("r", category, {"consistency_free": consistency_free})


def test_rise_summary_percentages():
    def result(category, c, r, p):
        return (
            Item("r", category, {}),
            {
                "scores": {
                    "consistency": c,
                    "reasoning": r,
                    "plausibility": p,
                    "score": rise.weighted_score(category, c, r, p),
                }
            },
        )

    summary = rise.summarize([result("temporal_reasoning", 5, 5, 5), result("spatial_reasoning", 4, 3, 5)])
    head = summary["headline"]
    assert head["accuracy"] == 50 and head["temporal"] == 100 and head["spatial"] == 0
    assert head["logical"] is None
    assert head["score_pct"] == pytest.approx(25 * ((5 + 3.7) / 2 - 1))
    assert head["reasoning_pct"] == pytest.approx(25 * (4 - 1))


# --------------------------------------------------------------------------- data and settings


def test_a_data_file_in_the_wrong_format_names_the_file_the_line_and_the_fields(tmp_path):
    path = tmp_path / "u.jsonl"
    good = {"id": 1, "prompt": "p", "task": "art", "text_rubrics": [], "image_rubrics": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": 2, "task": "art"}) + "\n")
    with pytest.raises(DataFormatError) as caught:
        ueval.load(path)
    message = str(caught.value)
    assert f"{path} line 2" in message and "prompt is missing" in message
    assert "text_rubrics" in message and "Expected items with" in message


def test_a_wise_file_must_be_a_list_with_valid_prompt_ids(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"prompt_id": 1}))
    with pytest.raises(DataFormatError, match="must hold a JSON list"):
        wise.load(path)
    path.write_text(json.dumps([{"prompt_id": 1200, "Prompt": "p", "Explanation": "e"}]))
    with pytest.raises(DataFormatError, match=r"item 0: prompt_id 1200 is outside 1-1000"):
        wise.load(path)
    path.write_text(json.dumps([{"prompt_id": 3, "Prompt": "p", "Explanation": "e"}] * 2))
    with pytest.raises(DataFormatError, match=r"repeated: \['3'\]"):
        wise.load(path)


def test_a_rise_sample_whose_image_is_missing_points_at_images_root(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            [
                {
                    "index": "t1",
                    "category": "temporal_reasoning",
                    "instruction": "i",
                    "image": "imgs/1.png",
                    "reference": "r",
                }
            ]
        )
    )
    with pytest.raises(DataFormatError, match="--images-root"):
        rise.load(path)
    path.write_text(json.dumps([{"index": "t1", "category": "colour", "instruction": "i", "image": "x.png"}]))
    with pytest.raises(DataFormatError, match="category 'colour' is not one of"):
        rise.load(path)


def test_configurations_presets_and_custom_settings():
    assert parse_config("bare").kind == "bare"
    assert parse_config("critic-off").overrides == {"max_generations_per_step": 1}
    custom = parse_config("planner-b:planner_model=my-planner,vlm_temperature=0.2")
    assert custom.overrides == {"planner_model": "my-planner", "vlm_temperature": 0.2}
    assert parse_config("b8:kind=bare,num_inference_steps=8").kind == "bare"
    for spec, message in [
        ("fast", "unknown configuration"),
        ("x:colour=red", "not a run setting"),
        ("x:max_generations_per_step=lots", "not a valid int"),
        ("x:max_generations_per_step=99", "between 1 and 20"),
        ("a b:seed=1", "may hold only"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config(spec)


def test_the_result_store_keeps_outputs_and_results_beside_the_judge_answers(tmp_path):
    from tools.judge.cache import JudgeCache

    results = store.ResultStore(tmp_path / "r.sqlite")
    results.put_output("wise", "bare", "1", "ok", {"text": "", "images": []})
    results.put_result("wise", "bare", "1", "judge", "v1", {"status": "scored", "scores": {}})
    results.close()
    with JudgeCache(tmp_path / "r.sqlite") as cache:  # the same file, the judge's own table
        cache.put("k", answer(1), label="scores", judge_model="judge", prompt_version="v1")
    again = store.ResultStore(tmp_path / "r.sqlite")
    assert again.output("wise", "bare", "1")["status"] == "ok"
    assert again.result("wise", "bare", "1", "judge", "v1")["status"] == "scored"
    assert again.result("wise", "bare", "1", "judge", "v2") is None
    with JudgeCache(tmp_path / "r.sqlite") as cache:
        assert cache.get("k")["value"] == 1
