"""The loop's decisions (SPEC §4): at most N generations per step, no critic call after the last
allowed attempt, regeneration on a failed or unusable verdict, compose after the last step."""

import pytest

from graph.routing import after_critique, after_generate, next_step

PLAN = [
    {"step_number": n, "step_name": f"s{n}", "instruction": None, "prompt": "p", "auxiliary_text": None} for n in (1, 2)
]


def attempt(step, n, *, last_allowed=False, success="unjudged", fallback=None):
    verdict = (
        None
        if success == "unjudged"
        else {
            "success": success,
            "refine_prompt": "better" if success is False else "p",
            "reasoning": "",
            "error": None if success is not None else "unparseable",
            "fallback": fallback,
        }
    )
    return {
        "step_number": step,
        "attempt": n,
        "prompt": "p",
        "seed": 1,
        "source": None,
        "image": {"path": "x", "sha256": "x", "width": 1, "height": 1},
        "last_allowed": last_allowed,
        "verdict": verdict,
        "generate_s": 0.0,
        "critique_s": None,
    }


@pytest.mark.parametrize(
    "attempts, expected",
    [
        ([attempt(1, 1)], "critique"),
        ([attempt(1, 1, success=False), attempt(1, 2)], "critique"),
        ([attempt(1, 1, success=False), attempt(1, 2, success=False), attempt(1, 3, last_allowed=True)], "accept"),
        ([attempt(1, 1, last_allowed=True)], "accept"),  # max 1 generation: never asks the critic
    ],
)
def test_after_generate(attempts, expected):
    assert after_generate({"plan": PLAN, "step_index": 0, "attempts": attempts}) == expected


@pytest.mark.parametrize(
    "success, fallback, expected",
    [
        (True, None, "accept"),
        (False, None, "generate"),
        (None, "regenerate", "generate"),  # unusable critic reply: regenerate, never treat as a pass
        (None, None, "generate"),  # runs recorded before the policy existed
        (None, "accept", "accept"),  # critic_unparsed=accept: keep the image unjudged
    ],
)
def test_after_critique(success, fallback, expected):
    state = {"plan": PLAN, "step_index": 0, "attempts": [attempt(1, 1, success=success, fallback=fallback)]}
    assert after_critique(state) == expected


def test_after_critique_judges_the_current_step_not_an_older_verdict():
    # Step 1 passed earlier; step 2's newest attempt failed: the old pass must not be reused.
    state = {"plan": PLAN, "step_index": 1, "attempts": [attempt(1, 1, success=True), attempt(2, 1, success=False)]}
    assert after_critique(state) == "generate"


@pytest.mark.parametrize("step_index, expected", [(0, "generate"), (1, "generate"), (2, "compose")])
def test_next_step(step_index, expected):
    assert next_step({"plan": PLAN, "step_index": step_index}) == expected


def test_a_guidance_step_without_a_prompt_is_accepted_without_generating():
    plan = [{**PLAN[0], "prompt": None, "auxiliary_text": "The water boils."}, PLAN[1]]
    assert next_step({"plan": plan, "step_index": 0}) == "accept"
    assert next_step({"plan": plan, "step_index": 1}) == "generate"
