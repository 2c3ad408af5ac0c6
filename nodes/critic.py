"""Critic node: the VLM judges the newest attempt of the current step (SPEC §3).

It sees [before, after] (before = the image that was edited, or a white canvas for a step drawn
from scratch), the plan's prompt and the prompt actually used. When no usable verdict comes back
after the allowed retries, the attempt records why (``success`` None, ``error``) and the run's
``critic_unparsed`` policy applies: ``regenerate`` (default: same prompt, new seed) or ``accept``
(keep the image, marked unjudged). An unparsed reply is never read as a pass or a fail, and no
older verdict is reused.
"""

from __future__ import annotations

import time

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from graph.context import Context, context_of
from graph.state import State, Verdict, attempts_for, current_step
from nodes import events
from nodes.prompts import CRITIC_SYSTEM, critic_user
from nodes.adapters import ask, learnt_update, model_for
from tools.llm.chat import ChatModels, text_part
from tools.store.images import ImageStore
from tools.replies.parsing import parse_verdict
from tools.llm.images import MessageImages

# How much of an unusable reply to keep in the state for inspection.
KEEP_UNPARSED_CHARS = 2000


def critique(state: State, runtime: Runtime[Context], models: ChatModels | None = None) -> dict:
    ctx = context_of(runtime)
    run_id = state["run_id"]
    step = current_step(state)
    attempt = attempts_for(state, step["step_number"])[-1]
    store = ImageStore(ctx.runs_dir)
    image = attempt["image"]
    images = MessageImages(store, transport=ctx.vlm_image_transport, max_pixels=ctx.vlm_image_max_pixels, image_count=2)
    before = images.part(attempt["source"]) if attempt["source"] else images.blank(image["width"], image["height"])
    messages = [
        SystemMessage(CRITIC_SYSTEM),
        HumanMessage(
            content=[
                before,
                images.part(image),
                text_part(critic_user(step["prompt"], attempt["prompt"])),
            ]
        ),
    ]
    started = time.perf_counter()
    where = {"step_number": step["step_number"], "attempt": attempt["attempt"]}
    model = model_for("critic", ctx, models)
    learnt = state.get("structured_output")
    answer, structured = ask(
        model,
        messages,
        "critic",
        parse_verdict,
        ctx,
        kind="verdict",
        learnt=learnt,
        on_retry=lambda retry: events.emit(runtime, events.REPLY_RETRY, run_id, **where, **retry),
    )
    if answer.value is not None:
        reasoning, success, refine = answer.value
        verdict = Verdict(success=success, refine_prompt=refine, reasoning=reasoning, error=None)
    else:
        last = answer.failures[-1]
        cut = " (reply hit the token limit)" if last["finish_reason"] == "length" else ""
        verdict = Verdict(
            success=None,
            refine_prompt=None,
            error=f"{last['error']}{cut}",  # the message names its reason code: "(schema): ..."
            reasoning=answer.reply[:KEEP_UNPARSED_CHARS],
            fallback=ctx.critic_unparsed,
        )
    seconds = round(time.perf_counter() - started, 3)
    events.emit(
        runtime,
        events.VERDICT,
        run_id,
        step_number=step["step_number"],
        attempt=attempt["attempt"],
        success=verdict["success"],
        refine_prompt=verdict["refine_prompt"],
        error=verdict["error"],
        seconds=seconds,
    )
    return {
        "attempts": [{**attempt, "verdict": verdict, "critique_s": seconds}],
        **learnt_update(ctx, model, "critic", structured, learnt),
    }
