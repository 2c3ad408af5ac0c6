"""Our critic rewards against the official code, case by case.

Every expected value below was worked out by hand from the reference, zhengdian1/InterleaveThinker
at commit 94c7593ad600748444e4b2d5efd888a72a93a6bd,
``train/EasyR1/verl/reward_function/interleave_thinker_reward.py``, following ``compute_score``:

    response = re.sub(r"\\s*(<|>|/)\\s*", r"\\1", raw)          # whitespace around < > / removed
    F = tag_format_reward(response)                             # tags (any case), <think> first
                                                                # if present, extract_answer (lower-
                                                                # case tags, json_repair), keys and
                                                                # bool/str types
    answer = extract_answer(response) or {}
    A = 1 if answer.get("previous_step_success", -1) == gt["success"] (and != -1) else 0
    prompt = answer.get("refine_prompt", "") or, when "", item["previous_prompt"] (= rewritten_prompt)
    gt success -> S = Q = 0.5; else regenerate(prompt, origin image or none, seed 0), judge against
    origin_prompt, S = ((sc - gt.semantics) / 10 + 1) / 2, Q likewise with pq; edit failure -> 0.5
    overall = 0.5 F + 0.5 (0.2 A + 0.6 S + 0.2 Q)

Where the reference's value is an evident accident we keep a strict one; those rows carry the
reference's value too and the test checks that the departures are exactly the rows marked so
(they are listed in the README's "Differences from the reference").
"""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest
from PIL import Image

from training.reward_reader import REFERENCE, read
from training.rewards import REWARD_WEIGHTS, StepwiseRewards, accuracy_reward, format_reward

USED = "a cat on a chair"  # the row's rewritten prompt: the reference's previous_prompt
PLAN = "a cat sits on a blue chair"  # the row's origin_prompt
GOOD_FALSE = '{"previous_step_success": false, "refine_prompt": "a red cup"}'

# name, reply, ground truth, F, A, prompt regenerated on a failed step, reference's A (when it
# differs: a departure), reference's prompt (when it differs or is unknown: a departure)
READER = [
    ("think then answer", f"<think>t</think><answer>{GOOD_FALSE}</answer>", False, 1, 1, "a red cup"),
    (
        "no think passes (position -1 < answer)",
        '<answer>{"previous_step_success": true, "refine_prompt": ""}</answer>',
        True,
        1,
        1,
        USED,
    ),
    (
        "think after answer fails F, not A",
        f"<answer>{GOOD_FALSE}</answer><think>late</think>",
        False,
        0,
        1,
        "a red cup",
    ),
    (
        "upper-case THINK after answer fails F",
        f"<answer>{GOOD_FALSE}</answer><THINK>x</THINK>",
        False,
        0,
        1,
        "a red cup",
    ),
    (
        "whitespace around < > / is removed, in the prompt too",
        '< think >t</ think >\n< answer >\n{"previous_step_success": false, "refine_prompt": '
        '"a cat / dog"}\n</ answer >',
        False,
        1,
        1,
        "a cat/dog",
    ),
    (
        "upper-case answer tags: F passes the tag test, extract_answer does not",
        f"<think>t</think><ANSWER>{GOOD_FALSE}</ANSWER>",
        False,
        0,
        0,
        USED,
    ),
    ("mixed-case closing tag", f"<think>t</think><answer>{GOOD_FALSE}</Answer>", False, 0, 0, USED),
    (
        "the first answer block is read",
        '<think>t</think><answer>{"previous_step_success": true, "refine_prompt": ""}</answer>'
        '<answer>{"previous_step_success": false, "refine_prompt": "y"}</answer>',
        False,
        1,
        0,
        USED,
    ),
    (
        "python-style object repaired by json_repair",
        "<think>t</think><answer>{'previous_step_success': False, 'refine_prompt': 'a blue cup',}</answer>",
        False,
        1,
        1,
        "a blue cup",
    ),
    (
        "code fence inside the block repaired",
        '<answer>```json\n{"previous_step_success": false, "refine_prompt": "z"}\n```</answer>',
        False,
        1,
        1,
        "z",
    ),
    (
        "unclosed object repaired",
        '<think>t</think><answer>{"previous_step_success": false, "refine_prompt": "w"</answer>',
        False,
        1,
        1,
        "w",
    ),
    (
        "verdict as a string",
        '<answer>{"previous_step_success": "false", "refine_prompt": "x"}</answer>',
        False,
        0,
        0,
        "x",
    ),
    (
        "empty refine_prompt is a valid string",
        '<think>t</think><answer>{"previous_step_success": false, "refine_prompt": ""}</answer>',
        False,
        1,
        1,
        USED,
    ),
    (
        "whitespace-only refine_prompt is sent as it is",
        '<answer>{"previous_step_success": false, "refine_prompt": "  "}</answer>',
        False,
        1,
        1,
        "  ",
    ),
    (
        "extra keys are fine",
        '<answer>{"previous_step_success": true, "refine_prompt": "", "why": "ok"}</answer>',
        True,
        1,
        1,
        USED,
    ),
    ("right verdict, other ground truth", f"<answer>{GOOD_FALSE}</answer>", True, 1, 0, "a red cup"),
    (
        "missing refine_prompt: F fails, A does not",
        '<answer>{"previous_step_success": false}</answer>',
        False,
        0,
        1,
        USED,
    ),
    ("empty object", "<think>t</think><answer>{}</answer>", False, 0, 0, USED),
    ("no answer tags: no accuracy either", GOOD_FALSE, False, 0, 0, USED),
    ("unclosed answer tag", f"<think>t</think><answer>{GOOD_FALSE}", False, 0, 0, USED),
    ("prose in the block repairs to an empty string", "<answer>looks fine to me</answer>", False, 0, 0, USED),
    # departures
    (
        "integer 0 as the verdict",
        '<answer>{"previous_step_success": 0, "refine_prompt": "x"}</answer>',
        False,
        0,
        0,
        "x",
        1,
    ),
    (
        "integer 1 as the verdict",
        '<answer>{"previous_step_success": 1, "refine_prompt": ""}</answer>',
        True,
        0,
        0,
        USED,
        1,
    ),
    (
        "float 0.0 as the verdict",
        '<answer>{"previous_step_success": 0.0, "refine_prompt": ""}</answer>',
        False,
        0,
        0,
        USED,
        1,
    ),
    (
        "null refine_prompt: the reference sends null to its edit server",
        '<answer>{"previous_step_success": false, "refine_prompt": null}</answer>',
        False,
        0,
        1,
        USED,
        None,
        "unknown",
    ),
    (
        "two objects in one block: the reference raises inside compute_score",
        f'<answer>{GOOD_FALSE} {{"note": 1}}</answer>',
        False,
        0,
        0,
        USED,
        None,
        "raises",
    ),
]


def _row(case):
    name, text, truth, f, a, prompt, *reference = case
    ref_a = reference[0] if reference and reference[0] is not None else a
    ref_prompt = reference[1] if len(reference) > 1 else prompt
    return name, text, truth, f, a, prompt, ref_a, ref_prompt


ROWS = [_row(case) for case in READER]


@pytest.mark.parametrize("name,text,truth,f,a,prompt,ref_a,ref_prompt", ROWS, ids=[r[0] for r in ROWS])
def test_format_accuracy_and_regeneration_prompt_as_the_reference(name, text, truth, f, a, prompt, ref_a, ref_prompt):
    assert format_reward([text]) == [float(f)]
    assert accuracy_reward([text], success=[truth]) == [float(a)]
    assert read(text).regeneration_prompt(USED) == prompt


def test_the_departures_are_exactly_the_marked_rows():
    departures = {r[0] for r in ROWS if (r[4], r[5]) != (r[6], r[7])}
    assert departures == {
        "integer 0 as the verdict",
        "integer 1 as the verdict",
        "float 0.0 as the verdict",
        "null refine_prompt: the reference sends null to its edit server",
        "two objects in one block: the reference raises inside compute_score",
    }
    assert "94c7593ad600748444e4b2d5efd888a72a93a6bd" in REFERENCE


def test_a_conversational_completion_is_read_like_its_text():
    completion = [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think>t</think>"},
                {"type": "text", "text": f"<answer>{GOOD_FALSE}</answer>"},
            ],
        }
    ]
    assert format_reward([completion]) == [1.0] and accuracy_reward([completion], success=[False]) == [1.0]


class Generator:
    """Records the requests; paints each prompt its own colour (FAIL in a prompt: the call fails)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.prompt_of: dict[bytes, str] = {}

    def __call__(self, requests):
        self.requests.extend(requests)
        if any("FAIL" in r["prompt"] for r in requests):
            raise RuntimeError("edit API returned an error")
        images = []
        for r in requests:
            colour = tuple(hashlib.sha256(r["prompt"].encode()).digest()[:3])
            image = Image.new("RGB", (r["width"], r["height"]), colour)
            self.prompt_of[image.tobytes()] = r["prompt"]
            images.append(image)
        return images


class Judge:
    """Scores the regenerated image by the prompt that painted it; records what it was asked."""

    def __init__(self, generator: Generator, scores: dict[str, tuple[float, float]]):
        self.generator, self.scores, self.items = generator, scores, []
        self.store = SimpleNamespace(put=lambda image: image)

    def judge_many(self, items):
        self.items.extend(items)
        out = []
        for _, after, plan in items:
            sc, pq = self.scores[self.generator.prompt_of[after.tobytes()]]
            out.append(SimpleNamespace(sc=sc, pq=pq, ok=True))
        return out


# name, reply, gt success, judged (semantics, quality), from scratch -> request prompt (None: no
# regeneration), judge's (sc, pq) of the new image, S, Q worked out by hand
STEPWISE = [
    (
        "success on the step: neutral, nothing regenerated",
        f"<answer>{GOOD_FALSE}</answer>",
        True,
        (4.0, 5.0),
        False,
        None,
        None,
        0.5,
        0.5,
    ),
    (
        "refined prompt",
        f"<think>t</think><answer>{GOOD_FALSE}</answer>",
        False,
        (4.0, 5.0),
        False,
        "a red cup",
        (8.0, 9.0),
        0.7,
        0.7,
    ),  # ((8-4)/10+1)/2, ((9-5)/10+1)/2
    (
        "empty refined prompt: the rewritten one",
        '<answer>{"previous_step_success": false, "refine_prompt": ""}</answer>',
        False,
        (4.0, 5.0),
        False,
        USED,
        (3.0, 6.0),
        0.45,
        0.55,
    ),
    (
        "wrong verdict, same prompt: regenerated all the same",
        f'<answer>{{"previous_step_success": true, "refine_prompt": "{USED}"}}</answer>',
        False,
        (6.0, 6.0),
        False,
        USED,
        (6.0, 2.0),
        0.5,
        0.3,
    ),
    (
        "no answer at all: the rewritten prompt",
        "the image looks fine",
        False,
        (2.0, 9.0),
        False,
        USED,
        (7.0, 9.0),
        0.75,
        0.5,
    ),
    (
        "from scratch: no source image",
        f"<answer>{GOOD_FALSE}</answer>",
        False,
        (0.0, 10.0),
        True,
        "a red cup",
        (10.0, 0.0),
        1.0,
        0.0,
    ),
    (
        "edit failure: neutral",
        '<answer>{"previous_step_success": false, "refine_prompt": "FAIL"}</answer>',
        False,
        (4.0, 5.0),
        False,
        "FAIL",
        None,
        0.5,
        0.5,
    ),
]


@pytest.mark.parametrize("name,text,truth,judged,scratch,prompt,scores,s,q", STEPWISE, ids=[c[0] for c in STEPWISE])
def test_stepwise_rewards_as_the_reference(name, text, truth, judged, scratch, prompt, scores, s, q):
    generator = Generator()
    judge = Judge(generator, {prompt: scores} if scores else {})
    origin = Image.new("RGB", (32, 32), (255, 255, 255) if scratch else (10, 20, 30))
    columns = {
        "success": [truth],
        "semantics": [judged[0]],
        "quality": [judged[1]],
        "origin_prompt": [PLAN],
        "rewritten_prompt": [USED],
        "from_scratch": [scratch],
        "seed": [7],
        "width": [32],
        "height": [32],
        "images": [[origin, Image.new("RGB", (32, 32), (1, 2, 3))]],
    }
    stepwise = StepwiseRewards(generator, judge)

    async def both():
        return await asyncio.gather(
            stepwise.semantics_reward([text], **columns), stepwise.quality_reward([text], **columns)
        )

    semantics, quality = asyncio.run(both())
    assert semantics == pytest.approx([s]) and quality == pytest.approx([q])
    if prompt is None:
        assert generator.requests == []
        return
    [request] = generator.requests
    assert request["prompt"] == prompt and request["seed"] == 0  # seed 0, not the row's 7
    assert request["source"] is (None if scratch else origin)
    assert (request["steps"], request["guidance"]) == (4, 1.0)  # get_model_config("klein")
    if scores:
        [(_, _, plan)] = judge.items
        assert plan == PLAN  # judged against the plan prompt, not the prompt it was made with


@pytest.mark.parametrize(
    "f,a,s,q,overall",
    [
        (1, 1, 0.7, 0.7, 0.88),  # 0.5 + 0.5 * (0.2 + 0.42 + 0.14)
        (0, 0, 0.5, 0.5, 0.2),  # 0.5 * (0.3 + 0.1)
        (1, 0, 0.45, 0.55, 0.69),  # 0.5 + 0.5 * (0.27 + 0.11)
    ],
)
def test_the_weights_give_the_references_overall(f, a, s, q, overall):
    assert sum(w * x for w, x in zip(REWARD_WEIGHTS, (f, a, s, q))) == pytest.approx(overall)
