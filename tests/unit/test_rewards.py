"""The critic's GRPO rewards, case by case, with a fake generator and a fake judge: what each
kind of reply earns under the reference's policy and under ours, what is regenerated (and how
batched), how failures are counted, and when the batch cache may serve a result.
(The hand-derived comparison with the official code is tests/unit/test_reward_parity.py.)"""

from __future__ import annotations

import asyncio
import doctest
import hashlib
import json
import threading
from types import SimpleNamespace

import pytest
from PIL import Image

from training import rewards
from training.rewards import (
    REWARD_WEIGHTS,
    StepwiseRewards,
    accuracy_reward,
    check_policies,
    format_reward,
    score_change,
)

PLAN = "a cat sits on a blue chair"
USED = "a cat on a chair"  # the prompt that made the judged image


def reply(success, refine: str, json_bool: bool = True) -> str:
    verdict = json.dumps(success) if json_bool else f'"{str(success).lower()}"'
    return (
        f'<think>checking</think><answer>{{"previous_step_success": {verdict}, '
        f'"refine_prompt": {json.dumps(refine)}}}</answer>'
    )


class FakeStore:
    def put(self, image):
        digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()
        return {"path": digest, "sha256": digest, "width": image.width, "height": image.height}


class FakeGenerator:
    """Paints each prompt its own colour; fails a call holding a prompt with GENFAIL."""

    def __init__(self):
        self.calls: list[list[dict]] = []
        self.by_colour: dict[tuple, str] = {}
        self.lock = threading.Lock()

    def __call__(self, requests):
        with self.lock:
            self.calls.append(requests)
        if any("GENFAIL" in r["prompt"] for r in requests):
            raise RuntimeError("CUDA out of memory")
        images = []
        for r in requests:
            colour = tuple(hashlib.sha256(r["prompt"].encode()).digest()[:3])
            self.by_colour[colour] = r["prompt"]
            images.append(Image.new("RGB", (r["width"], r["height"]), colour))
        return images


class FakeJudge:
    """Scores by the prompt that painted the after-image: SCORES[prompt] = (sc, pq), None = failed."""

    def __init__(self, generator: FakeGenerator, scores: dict[str, tuple]):
        self.store = FakeStore()
        self.generator = generator
        self.scores = scores
        self.calls: list[list[tuple]] = []

    def judge_many(self, items):
        self.calls.append(items)
        out = []
        for before, after, instruction in items:
            assert instruction.startswith(PLAN)
            prompt = self.prompt_of(after)
            sc, pq = self.scores.get(prompt, (5.0, 5.0))
            out.append(SimpleNamespace(sc=sc, pq=pq, ok=sc is not None and pq is not None))
        return out

    def prompt_of(self, ref):
        for colour, prompt in self.generator.by_colour.items():
            image = Image.new("RGB", (ref["width"], ref["height"]), colour)
            if self.store.put(image)["sha256"] == ref["sha256"]:
                return prompt
        raise AssertionError("unknown image")


def columns(n: int, *, success=False, semantics=4.0, quality=5.0, scratch=False, seed=7, colour=(10, 20, 30)):
    before = Image.new("RGB", (32, 32), (255, 255, 255) if scratch else colour)
    after = Image.new("RGB", (32, 32), (1, 2, 3))
    return {
        "success": [success] * n,
        "semantics": [semantics] * n,
        "quality": [quality] * n,
        "origin_prompt": [PLAN] * n,
        "rewritten_prompt": [USED] * n,
        "from_scratch": [scratch] * n,
        "seed": [seed] * n,
        "width": [32] * n,
        "height": [32] * n,
        "images": [[before, after] for _ in range(n)],
    }


def concat(*parts):
    merged = {}
    for part in parts:
        for key, values in part.items():
            merged.setdefault(key, []).extend(values)
    return merged


def run_both(stepwise, completions, cols):
    async def both():
        return await asyncio.gather(
            stepwise.semantics_reward(completions, **cols), stepwise.quality_reward(completions, **cols)
        )

    return asyncio.run(both())


REFERENCE = {}  # StepwiseRewards' defaults: the reference's policy
OURS = dict(seed="row", skip_unchanged_prompt=True, malformed_reply="zero")

CASES = [
    # name, policy, reply, ground-truth success, prompt regenerated (None: none), judge (sc, pq)
    # of that image -> F, A, S, Q, status. The judged image scored (4, 5) (see ``columns``).
    ("no answer at all", REFERENCE, "the image looks fine", False, USED, (6.0, 5.0), 0, 0, 0.6, 0.5, "regenerated"),
    ("no answer at all, ours", OURS, "the image looks fine", False, None, None, 0, 0, 0.0, 0.0, "malformed"),
    (
        "verdict as a string",
        REFERENCE,
        reply(False, "a tabby cat on a blue chair", json_bool=False),
        False,
        "a tabby cat on a blue chair",
        (8.0, 9.0),
        0,
        0,
        0.7,
        0.7,
        "regenerated",
    ),
    (
        "verdict as a string, ours",
        OURS,
        reply(False, "a tabby cat", json_bool=False),
        False,
        None,
        None,
        0,
        0,
        0.0,
        0.0,
        "malformed",
    ),
    (
        "wrong verdict keeps the prompt",
        REFERENCE,
        reply(True, USED),
        False,
        USED,
        (4.0, 7.0),
        1,
        0,
        0.5,
        0.6,
        "regenerated",
    ),
    ("wrong verdict keeps the prompt, ours", OURS, reply(True, USED), False, None, None, 1, 0, 0.5, 0.5, "unchanged"),
    ("wrong verdict on a success", REFERENCE, reply(False, "a dog"), True, None, None, 1, 0, 0.5, 0.5, "gt_success"),
    ("right verdict on a success", REFERENCE, reply(True, USED), True, None, None, 1, 1, 0.5, 0.5, "gt_success"),
    ("unreadable reply on a success, ours", OURS, "<answer>{", True, None, None, 0, 0, 0.5, 0.5, "gt_success"),
    (
        "improved regeneration",
        REFERENCE,
        reply(False, "a grey cat on a blue wooden chair"),
        False,
        "a grey cat on a blue wooden chair",
        (8.0, 9.0),
        1,
        1,
        0.7,
        0.7,
        "regenerated",
    ),
    (
        "worse regeneration",
        OURS,
        reply(False, "an abstract blur"),
        False,
        "an abstract blur",
        (2.0, 3.0),
        1,
        1,
        0.4,
        0.4,
        "regenerated",
    ),
    (
        "generator failure",
        REFERENCE,
        reply(False, "GENFAIL a cat"),
        False,
        "GENFAIL a cat",
        None,
        1,
        1,
        0.5,
        0.5,
        "generator_failed",
    ),
    (
        "judge failure",
        REFERENCE,
        reply(False, "a cat, judge breaks"),
        False,
        "a cat, judge breaks",
        (None, None),
        1,
        1,
        0.5,
        0.5,
        "judge_failed",
    ),
    (
        "judge half failure",
        REFERENCE,
        reply(False, "a cat, quality breaks"),
        False,
        "a cat, quality breaks",
        (8.0, None),
        1,
        1,
        0.7,
        0.5,
        "judge_failed",
    ),
    (
        "empty refine on a failure verdict",
        REFERENCE,
        '<answer>{"previous_step_success": false, "refine_prompt": ""}</answer>',
        False,
        USED,
        (5.0, 5.0),
        1,
        1,
        0.55,
        0.5,
        "regenerated",
    ),
]


@pytest.mark.parametrize("name,policy,text,success,regenerated,judged,f,a,s,q,status", CASES, ids=[c[0] for c in CASES])
def test_each_kind_of_reply_gets_its_rewards(name, policy, text, success, regenerated, judged, f, a, s, q, status):
    generator = FakeGenerator()
    judge = FakeJudge(generator, {regenerated: judged} if judged else {})
    stepwise = StepwiseRewards(generator, judge, **policy)
    cols = columns(1, success=success)
    logged_extra = {}
    cols["log_extra"] = lambda column, values: logged_extra.setdefault(column, []).extend(values)

    assert format_reward([text], **cols) == [f]
    assert accuracy_reward([text], **cols) == [a]
    semantics, quality = run_both(stepwise, [text], cols)
    assert semantics == pytest.approx([s]) and quality == pytest.approx([q])
    assert logged_extra == {"stepwise": [status]}
    assert [r["prompt"] for call in generator.calls for r in call] == ([regenerated] if regenerated else [])
    assert all(r["seed"] == (7 if policy else 0) for call in generator.calls for r in call)
    assert len(judge.calls) == int(bool(regenerated) and status != "generator_failed")


def test_the_weights_reproduce_the_papers_mix():
    for f, a, s, q in [(1, 1, 0.7, 0.6), (0, 1, 0.2, 0.9), (1, 0, 0.5, 0.5)]:
        weighted = sum(w * x for w, x in zip(REWARD_WEIGHTS, (f, a, s, q)))
        assert weighted == pytest.approx(0.5 * f + 0.5 * (0.2 * a + 0.6 * s + 0.2 * q))


def test_a_group_is_regenerated_in_one_call_with_one_seed_and_judged_at_once():
    generator = FakeGenerator()
    judge = FakeJudge(generator, {"a red cat": (9.0, 6.0), "a blue cat": (3.0, 4.0)})
    stepwise = StepwiseRewards(generator, judge, **OURS)
    texts = [
        reply(False, "a red cat"),
        reply(False, "a blue cat"),
        reply(False, "a red cat"),
        reply(True, USED),
        "garbage",
        reply(False, "a blue cat"),
        reply(False, "a red cat"),
        reply(False, "a green cat"),
    ]
    metrics = {}
    cols = {**columns(8), "log_metric": lambda name, value: metrics.setdefault(name, value)}

    semantics, quality = run_both(stepwise, texts, cols)

    assert len(generator.calls) == 1  # the whole group, one backend call, once for S and Q
    prompts = sorted(r["prompt"] for r in generator.calls[0])
    assert prompts == ["a blue cat", "a green cat", "a red cat"]  # duplicates asked once
    assert {r["seed"] for r in generator.calls[0]} == {7}
    assert all(r["source"] is cols["images"][0][0] for r in generator.calls[0])
    assert all((r["steps"], r["guidance"]) == (4, 1.0) for r in generator.calls[0])
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 3
    assert semantics == pytest.approx([0.75, 0.45, 0.75, 0.5, 0.0, 0.45, 0.75, 0.55])
    assert quality == pytest.approx([0.55, 0.45, 0.55, 0.5, 0.0, 0.45, 0.55, 0.5])
    assert metrics["stepwise/regenerations"] == 3 and metrics["stepwise/regenerated"] == 6
    assert metrics["stepwise/malformed"] == 1 and metrics["stepwise/unchanged"] == 1
    assert metrics["stepwise/generator_failed"] == 0 and metrics["stepwise/judge_failed"] == 0
    assert metrics["stepwise/total_s"] >= metrics["stepwise/regenerate_s"] >= 0


def test_groups_split_by_origin_and_batch_limit_and_failures_are_counted():
    generator = FakeGenerator()
    judge = FakeJudge(generator, {"p1": (6.0, 6.0), "broken": (None, None)})
    stepwise = StepwiseRewards(generator, judge, max_batch=2)
    first = columns(3, colour=(1, 1, 1))
    second = columns(2, colour=(2, 2, 2), seed=11)
    scratch = columns(1, scratch=True)
    texts = (
        [reply(False, p) for p in ("p1", "p2", "p3")]
        + [reply(False, p) for p in ("GENFAIL", "broken")]
        + [reply(False, "p4")]
    )
    metrics = {}
    cols = {**concat(first, second, scratch), "log_metric": lambda n, v: metrics.setdefault(n, v)}

    semantics, _ = run_both(stepwise, texts, cols)

    sizes = sorted(len(call) for call in generator.calls)
    assert sizes == [1, 1, 2, 2]  # 3 prompts of origin 1 in calls of 2 + 1, origin 2 fails, scratch
    scratch_call = next(c for c in generator.calls if c[0]["prompt"] == "p4")
    assert scratch_call[0]["source"] is None
    scratch_items = next(items for items in judge.calls if len(items) == 1 and items[0][0] is None)
    assert scratch_items[0][2] == PLAN
    assert semantics[0] == pytest.approx(0.6)
    assert semantics[3:5] == [0.5, 0.5]
    assert metrics["stepwise/generator_failed"] == 2  # both rollouts of the failed call
    assert metrics["stepwise/judge_failed"] == 0
    assert stepwise.totals["generator_failed"] == 2 and stepwise.totals["regenerations"] == 4


def test_attempts_of_one_source_and_scratch_rows_share_calls_with_their_own_seeds_and_plans():
    generator = FakeGenerator()
    judge = FakeJudge(generator, {})
    stepwise = StepwiseRewards(generator, judge, seed="row")
    first, second = columns(1, seed=1), columns(1, seed=2)  # two attempts of one step
    scratch = [columns(1, scratch=True, seed=5), columns(1, scratch=True, seed=6)]
    scratch[1]["origin_prompt"] = [PLAN + " at night"]
    texts = [reply(False, "p"), reply(False, "p"), reply(False, "q"), reply(False, "q")]

    run_both(stepwise, texts, concat(first, second, *scratch))

    assert len(generator.calls) == 2
    edit, fresh = sorted(generator.calls, key=lambda call: call[0]["source"] is None)
    assert [(r["prompt"], r["seed"]) for r in edit] == [("p", 1), ("p", 2)]
    assert [(r["prompt"], r["seed"], r["source"]) for r in fresh] == [("q", 5, None), ("q", 6, None)]
    plans = sorted(item[2] for items in judge.calls for item in items if item[0] is None)
    assert plans == [PLAN, PLAN + " at night"]


def test_a_failed_judgment_is_counted_in_the_totals():
    generator = FakeGenerator()
    stepwise = StepwiseRewards(generator, FakeJudge(generator, {"x": (None, 7.0)}))
    semantics, quality = run_both(stepwise, [reply(False, "x")], columns(1))
    assert (semantics, quality) == ([0.5], [0.6])
    assert stepwise.totals["judge_failed"] == 1


def test_a_store_that_cannot_write_counts_as_a_judge_failure():
    generator = FakeGenerator()
    judge = FakeJudge(generator, {})

    def full_disk(image):
        raise OSError("No space left on device")

    judge.store.put = full_disk
    stepwise = StepwiseRewards(generator, judge)
    assert run_both(stepwise, [reply(False, "x")], columns(1)) == [[0.5], [0.5]]
    assert stepwise.totals["judge_failed"] == 1 and not judge.calls


def test_score_change_maps_the_whole_scale():
    assert (score_change(10, 0), score_change(0, 10), score_change(7, 7)) == (1.0, 0.0, 0.5)


def test_doctests():
    assert doctest.testmod(rewards).failed == 0


def test_the_batch_cache_serves_a_result_only_for_the_same_columns():
    """Two calls with the same replies, plan prompt, seed and images but another ground truth
    (or other judged scores, or another origin image) are other batches: no stale score."""
    generator = FakeGenerator()
    judge = FakeJudge(generator, {"a red cat": (9.0, 8.0)})
    stepwise = StepwiseRewards(generator, judge)
    texts = [reply(False, "a red cat")]
    failed = columns(1, success=False)

    assert run_both(stepwise, texts, failed) == [[pytest.approx(0.75)], [pytest.approx(0.65)]]
    assert len(generator.calls) == 1  # S and Q of one batch share one regeneration
    assert run_both(stepwise, texts, {**failed, "success": [True]}) == [[0.5], [0.5]]  # not 0.75
    assert run_both(stepwise, texts, {**failed, "semantics": [8.0]}) == [[pytest.approx(0.55)], [pytest.approx(0.65)]]
    assert len(generator.calls) == 2
    other = Image.new("RGB", (32, 32), (99, 99, 99))
    run_both(stepwise, texts, {**failed, "images": [[other, failed["images"][0][1]]]})
    assert len(generator.calls) == 3 and generator.calls[-1][0]["source"] is other


def test_the_reference_policy_uses_seed_zero_for_every_row_and_regenerates_everything():
    generator = FakeGenerator()
    judge = FakeJudge(generator, {})
    stepwise = StepwiseRewards(generator, judge)
    cols = concat(columns(2, seed=7), columns(2, seed=11, colour=(3, 3, 3)))
    texts = [reply(True, USED), "garbage", reply(False, ""), reply(False, "a red cat")]

    run_both(stepwise, texts, cols)

    requests = [r for call in generator.calls for r in call]
    assert {r["seed"] for r in requests} == {0}
    assert sorted(r["prompt"] for r in requests) == sorted([USED, USED, "a red cat"])  # per origin
    assert stepwise.totals["regenerated"] == 4 and stepwise.totals["unchanged"] == 0


@pytest.mark.parametrize(
    "seed,skip,malformed,message",
    [
        (0, True, "regenerate", "--regen_seed row"),
        ("row", False, "ignore", "choose one of regenerate, zero"),
        ("seven", False, "zero", "pass an integer"),
    ],
)
def test_inconsistent_policies_are_refused_with_the_fix(seed, skip, malformed, message):
    with pytest.raises(ValueError, match=message):
        check_policies(seed, skip, malformed)
    with pytest.raises(ValueError, match=message):
        StepwiseRewards(None, None, seed=seed, skip_unchanged_prompt=skip, malformed_reply=malformed)
