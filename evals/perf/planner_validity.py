"""What share of a real model's planner replies parse and pass the plan contract, with structured
output off and on, through a real OpenAI-compatible server.

Why: the tolerant parser and the structured-output forms are only claims until a model that
nobody here trained answers. This sends 20 narrative requests (no images) with the planner's own
messages (``nodes.planner.planner_messages``), one try each (no retries), greedy, and counts
replies that ``parse_plan`` reads and ``check_plan`` accepts. Figures describe the server + model
pair measured, not planner quality.

    transformers serve FOLDER --device cpu --port 8000        # or: python -m llama_cpp.server ...
    python -m evals.perf.planner_validity --base-url http://127.0.0.1:8000/v1 --model FOLDER \
        --structured json [--requests 20] [--max-tokens 256]

``--structured``: the form "on" uses (json for vLLM/OpenAI, json_object for llama.cpp).
"""

from __future__ import annotations

import argparse
import json
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


def measure(base_url: str, model_name: str, mode: str, count: int, max_tokens: int, timeout_s: float) -> dict:
    ctx = Context(vlm_structured_output=mode, runs_dir=tempfile.mkdtemp())
    model = openai_model(base_url, "none", model_name, max_tokens, 0.0, timeout_s, 0)
    store = ImageStore(ctx.runs_dir)
    reasons: Counter = Counter()
    valid, started = 0, time.perf_counter()
    for request in REQUESTS[:count]:
        reply, _ = complete(
            model, planner_messages(request, [], ctx, store), "planner", **(structured_output(ctx, "plan") or {})
        )
        try:
            _, steps = parse_plan(reply)
            check_plan(steps, 0)
            valid += 1
        except ValueError as exc:
            reasons[getattr(exc, "reason", "contract")] += 1
    return {
        "structured_output": mode,
        "requests": count,
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
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    count = max(1, min(args.requests, len(REQUESTS)))
    rows = [
        measure(args.base_url, args.model, mode, count, args.max_tokens, args.timeout_s)
        for mode in ("off", args.structured)
    ]
    for row in rows:
        print(json.dumps(row))
    off, on = rows
    print(f"valid plans: off {off['valid']}/{count}, {on['structured_output']} {on['valid']}/{count}")


if __name__ == "__main__":
    main()
