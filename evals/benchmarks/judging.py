"""Judging one benchmark item: ask its questions through the project's one judge
(``tools.judge.judge.Judge.ask``, answers cached in ``tools.judge.cache``) and score it.

The benchmark module writes the questions (``Benchmark.questions``) and reads the answers
(``Benchmark.score``); here they are asked under the benchmark's name and prompt version (both
part of every answer's key), with the benchmark's system text where a question sets none.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.data import Item
from tools.judge.judge import Judge


def judge_item(
    bench: Benchmark, judge: Judge, item: Item, output: dict[str, Any], *, retry_failed: bool = False
) -> dict[str, Any]:
    """Ask an item's questions (sequentially; the judge bounds concurrency) and score it."""
    started = time.perf_counter()
    answers = []
    for question in bench.questions(item, output, judge.store):
        if question.system is None:
            question = dataclasses.replace(question, system=bench.judge_system)
        answers.append(
            judge.ask(question, scope=bench.name, prompt_version=bench.prompt_version, retry_failed=retry_failed)
        )
    result = bench.score(item, output, answers)
    known = all(a["input_tokens"] is not None for a in answers if a["requests"])
    result["judge"] = {
        "requests": sum(a["requests"] or 0 for a in answers),
        "tokens": sum((a["input_tokens"] or 0) + (a["output_tokens"] or 0) for a in answers) if known else None,
        "asked_now": sum(not a["cached"] for a in answers),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return result
