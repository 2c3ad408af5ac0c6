"""Scripted planner and critic replies for the offline demo and the tests.

Served by ``ScriptedChatServer`` in place of real VLMs, the replies follow the planner and critic
contracts exactly (think + answer JSON). The script is stateless and deterministic, so a run
killed and resumed against a fresh server gets the same replies: the critic rejects the first
attempt of the middle step once, with a refined prompt, so the regeneration loop is visible.
"""

from __future__ import annotations

import json

from nodes.prompts import read_critic_user
from tools.doubles.scripted_chat import count_images, message_text
from tools.replies.contracts import verdict_answer

PLANNER_MODEL = "demo-planner"
CRITIC_MODEL = "demo-critic"

SECOND_STEP_PROMPT = "Show the work about halfway done; keep the same table, lighting and camera angle unchanged"
REFINED_SECOND_STEP_PROMPT = (
    "Show the work clearly halfway done, with the half-finished object "
    "centred in the foreground; keep the same table, lighting and camera "
    "angle unchanged"
)


def demo_plan(request: str) -> list[dict]:
    topic = request.strip().rstrip("?.!")
    return [
        {
            "step_number": 1,
            "step_name": "Get ready",
            "instruction": f"Lay out everything needed for: {topic}.",
            "prompt": (
                f"A bright, top-down photo of a clean wooden table with everything needed for: "
                f"{topic}; soft daylight, sharp focus, no text"
            ),
            "auxiliary_text": None,
        },
        {
            "step_number": 2,
            "step_name": "Halfway there",
            "instruction": "The work is about half done.",
            "prompt": SECOND_STEP_PROMPT,
            "auxiliary_text": None,
        },
        {
            "step_number": 3,
            "step_name": "Finished",
            "instruction": "The finished result, neat and complete.",
            "prompt": "Show the finished result, neat and complete; keep the table and lighting unchanged",
            "auxiliary_text": None,
        },
    ]


def guidance_plan(request: str, image_count: int) -> list[dict]:
    """Guidance mode: a request that says "continue" gets Task B (two new steps after the given
    images, each an edit); any other gets Task A (one text answer per given image)."""
    if "continue" in request.lower():
        first = image_count + 1
        return [
            {
                "step_number": first,
                "step_name": "Next",
                "instruction": "The sequence goes on.",
                "prompt": "Carry the scene one step further; keep the framing and lighting unchanged",
                "auxiliary_text": None,
            },
            {
                "step_number": first + 1,
                "step_name": "Done",
                "instruction": "The finished result.",
                "prompt": "Show the finished result; keep the framing and lighting unchanged",
                "auxiliary_text": None,
            },
        ]
    return [
        {
            "step_number": k,
            "step_name": f"Image {k}",
            "instruction": None,
            "prompt": None,
            "auxiliary_text": f"Image {k} shows stage {k} of the process.",
        }
        for k in range(1, image_count + 1)
    ]


def planner_reply(request: str, image_count: int = 0) -> str:
    if image_count:
        plan = {"execution_plan": guidance_plan(request, image_count)}
        thought = "The user gave images; the wording says which task it is."
    else:
        plan = {"execution_plan": demo_plan(request)}
        thought = "Three image operations: set the scene, show progress by editing it, then show the finished result."
    return f"<think>{thought}</think><answer>{json.dumps(plan)}</answer>"


def critic_reply(original: str, used: str) -> str:
    if original == SECOND_STEP_PROMPT and used == original:
        verdict = verdict_answer(False, REFINED_SECOND_STEP_PROMPT)
        thought = "The edit barely shows progress and the object is off-centre."
    else:
        verdict = verdict_answer(True, used)
        thought = "The change matches the instruction; no anatomy errors or collateral damage."
    return f"<think>{thought}</think><answer>{json.dumps(verdict)}</answer>"


def respond(body: dict) -> str:
    """Responder for ``ScriptedChatServer``: dispatches on the model name."""
    text = message_text(body["messages"][-1])
    if body.get("model") == CRITIC_MODEL:
        return critic_reply(*read_critic_user(text))
    request = text.split("Request:", 1)[-1]
    return planner_reply(request, count_images(body))
