"""Critic node: the VLM judges the newest attempt of the current step (SPEC §3).

It sees [before, after] (before = the image that was edited, or a white canvas for step 1), the
plan's prompt and the prompt actually used. If no usable verdict comes back after the allowed
retries, the attempt records why (``success`` None) and the router regenerates with the same
prompt and a new seed: an unparsed reply is never read as a pass, and no older verdict is reused.
"""

from __future__ import annotations

import time

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from graph.context import Context, context_of
from graph.state import State, Verdict, attempts_for, current_step
from nodes import events
from nodes.prompts import CRITIC_SYSTEM, critic_user
from tools.chat import chat_model, complete, png_part, text_part
from tools.image_store import ImageStore, blank_canvas_png
from tools.parsing import VerdictParseError, parse_verdict

# How much of an unusable reply to keep in the state for inspection.
KEEP_UNPARSED_CHARS = 2000


def critique(state: State, runtime: Runtime[Context]) -> dict:
    ctx = context_of(runtime)
    run_id = state["run_id"]
    step = current_step(state)
    attempt = attempts_for(state, step["step_number"])[-1]
    store = ImageStore(ctx.runs_dir)
    image = attempt["image"]
    after = store.read_png(image)
    before = (store.read_png(attempt["source"]) if attempt["source"]
              else blank_canvas_png(image["width"], image["height"]))

    messages = [SystemMessage(CRITIC_SYSTEM), HumanMessage(content=[
        png_part(before), png_part(after), text_part(critic_user(step["prompt"], attempt["prompt"])),
    ])]
    model = chat_model(ctx.critic_base_url, ctx.critic_api_key, ctx.critic_model,
                       ctx.vlm_max_tokens, ctx.vlm_temperature, ctx.vlm_timeout_s, ctx.vlm_retries)
    started = time.perf_counter()
    verdict = None
    for _ in range(ctx.vlm_retries + 1):
        reply, finish = complete(model, messages, "critic")
        try:
            reasoning, success, refine = parse_verdict(reply)
        except VerdictParseError as exc:
            cut = " (reply hit the token limit)" if finish == "length" else ""
            verdict = Verdict(success=None, refine_prompt=None, error=f"{exc}{cut}",
                              reasoning=reply[:KEEP_UNPARSED_CHARS])
            continue
        verdict = Verdict(success=success, refine_prompt=refine, reasoning=reasoning, error=None)
        break
    seconds = round(time.perf_counter() - started, 3)
    events.emit(runtime, events.VERDICT, run_id, step_number=step["step_number"],
                attempt=attempt["attempt"], success=verdict["success"],
                refine_prompt=verdict["refine_prompt"], error=verdict["error"], seconds=seconds)
    return {"attempts": [{**attempt, "verdict": verdict, "critique_s": seconds}]}
