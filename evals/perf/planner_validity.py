"""What share of a real model's planner replies parse and pass the plan contract, with structured
output off and on, through a real OpenAI-compatible server.

Why: the tolerant parser and the structured-output forms are only claims until a model that
nobody here trained answers. This sends 20 narrative requests (no images) with the planner's own
messages (``nodes.planner.planner_messages``), one try each (no retries), greedy, and counts
replies that ``parse_plan`` reads and ``check_plan`` accepts. Figures describe the server + model
pair measured, not planner quality.

    python -m llama_cpp.server --model FILE.gguf --model_alias smollm2 --port 8000   # or vllm serve, ...
    python -m evals.perf.planner_validity --base-url http://127.0.0.1:8000/v1 --model smollm2 \
        --structured json_object [--requests 20] [--max-tokens 256] [--max-plan-steps 30]

``--structured``: the form "on" uses (json for vLLM/OpenAI, json_object for llama.cpp; ``transformers
serve`` ignores every form, so on and off measure the same thing there). ``--max-plan-steps`` is
the plan contract's limit and the schema's ``maxItems``, as in a run. One line per request goes to
stderr while it runs; the two result rows (JSON) and the on/off summary go to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter

from graph.context import Context
from nodes.adapters import structured_output
from nodes.guidance import check_plan
from nodes.planner import planner_messages
from tools.llm.chat import complete, openai_model
from tools.replies.parsing import parse_plan
from tools.store.images import ImageStore

REQUESTS = [
    "How do I fold a paper crane?",
    "Show how a seed grows into a sunflower.",
    "Illustrate making a cup of pour-over coffee.",
    "How does a caterpillar become a butterfly?",
    "Show the phases of the moon over a month.",
    "How to plant a tomato seedling.",
    "Illustrate building a snowman.",
    "Show how bread dough rises and bakes.",
    "How to tie a bowline knot.",
    "Show a day in the life of a lighthouse keeper.",
    "Illustrate how a volcano erupts.",
    "How to change a bicycle tyre.",
    "Show ice melting into water and then evaporating.",
    "How to make a paper airplane.",
    "Illustrate the water cycle.",
    "Show how to brew green tea.",
    "How does a frog grow from a tadpole?",
    "Illustrate setting up a tent.",
    "Show how a candle burns down over an evening.",
    "How to draw a simple cat in four steps.",
]


def measure(
    base_url: str,
    model_name: str,
    mode: str,
    count: int,
    max_tokens: int,
    timeout_s: float,
    max_plan_steps: int | None = None,
) -> dict:
    limit = {} if max_plan_steps is None else {"max_plan_steps": max_plan_steps}
    ctx = Context(vlm_structured_output=mode, runs_dir=tempfile.mkdtemp(), **limit)
    max_plan_steps = ctx.max_plan_steps
    model = openai_model(base_url, "none", model_name, max_tokens, 0.0, timeout_s, 0)
    store = ImageStore(ctx.runs_dir)
    reasons: Counter = Counter()
    valid, started = 0, time.perf_counter()
    for index, request in enumerate(REQUESTS[:count], start=1):
        asked = time.perf_counter()
        reply, finish = complete(
            model, planner_messages(request, [], ctx, store), "planner", **(structured_output(ctx, "plan") or {})
        )
        try:
            _, steps = parse_plan(reply)
            if len(steps) > max_plan_steps:  # as the planner node: a longer plan is unusable
                raise ValueError(f"{len(steps)} steps, over max_plan_steps={max_plan_steps}")
            check_plan(steps, 0)
            valid += 1
            said = f"valid, {len(steps)} steps"
        except ValueError as exc:
            reason = getattr(exc, "reason", "contract")
            reasons[reason] += 1
            said = f"unusable ({reason})"
        seconds = time.perf_counter() - asked
        print(
            f"[{mode} {index}/{count}] {said}, finish {finish}, {seconds:.1f} s: {request}", file=sys.stderr, flush=True
        )
    return {
        "structured_output": mode,
        "requests": count,
        "max_tokens": max_tokens,
        "max_plan_steps": max_plan_steps,
        "valid": valid,
        "share": round(valid / count, 3),
        "failures": dict(reasons),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--structured", default="json", choices=("json", "json_object", "regex"))
    parser.add_argument("--requests", type=int, default=len(REQUESTS))
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-plan-steps", type=int, default=None, help="default: the run default (30)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    count = max(1, min(args.requests, len(REQUESTS)))
    rows = [
        measure(args.base_url, args.model, mode, count, args.max_tokens, args.timeout_s, args.max_plan_steps)
        for mode in ("off", args.structured)
    ]
    for row in rows:
        print(json.dumps(row))
    off, on = rows
    print(f"valid plans: off {off['valid']}/{count}, {on['structured_output']} {on['valid']}/{count}")


if __name__ == "__main__":
    main()
