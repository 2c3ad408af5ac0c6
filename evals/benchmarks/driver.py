"""The driver: produce and judge every (configuration, item), a few at a time, resumably.

Resumable per item, at two grains. An item's output is stored once it exists (``store``); a graph
run interrupted half-way is resumed by ``graph.runs.batch.run_one``. Every judge question is
stored by the judge's answer cache (``tools.judge.cache``), and an item's scores once all its
questions are answered. A rerun skips what is stored, so a killed evaluation never asks the judge
the same question twice (only a request in flight at the kill is lost and asked again).

Never an invented score: a question the judge could not answer is stored as a failure with a
reason code; the benchmark module decides what a failed question does to its item (documented
there) and the report counts them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from evals.benchmarks.benchmark import Benchmark
from evals.benchmarks.configs import Config
from evals.benchmarks.data import Item
from evals.benchmarks.judging import judge_item
from evals.benchmarks.outputs import make_output
from evals.benchmarks.store import ResultStore
from graph.context import Context
from tools.judge.judge import Judge

logger = logging.getLogger(__name__)

STAGES = ("all", "generate", "judge")


@dataclass
class Progress:
    """One finished (configuration, item) unit, for a progress display."""

    done: int
    total: int
    config: str
    item: str
    status: str
    detail: str = ""


def evaluate(
    bench: Benchmark,
    items: list[Item],
    configs: list[Config],
    ctx: Context,
    judge: Judge | None,
    results: ResultStore,
    *,
    stage: str = "all",
    concurrency: int = 2,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    checkpoint_every_s: float = 10.0,
) -> None:
    """Produce and judge every (configuration, item), ``concurrency`` at a time, resumably.

    ``on_checkpoint`` (the partial report) is called at most every ``checkpoint_every_s`` while
    running; one failing item never stops the others.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} must be one of {', '.join(STAGES)}")
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be at least 1")
    if stage != "generate" and judge is None:
        raise ValueError("judging needs a judge model (--judge), or use --stage generate")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configuration names must be unique, got {names}")
    units = [(config, item) for config in configs for item in items]
    lock = threading.Lock()
    state = {"done": 0, "checkpoint": time.monotonic()}

    def one(unit: tuple[Config, Item]) -> None:
        config, item = unit
        try:
            status, detail = _unit(config, item)
        except Exception as exc:  # noqa: BLE001 -- a bug on one item: report it, go on
            logger.exception("item %s of %s failed", item.id, config.name)
            status, detail = "error", f"{type(exc).__name__}: {exc}"
        with lock:
            state["done"] += 1
            if on_progress is not None:
                on_progress(Progress(state["done"], len(units), config.name, item.id, status, detail))
            due = time.monotonic() - state["checkpoint"] >= checkpoint_every_s
            if on_checkpoint is not None and due and state["done"] < len(units):
                state["checkpoint"] = time.monotonic()
                on_checkpoint()

    def _unit(config: Config, item: Item) -> tuple[str, str]:
        output = results.output(bench.name, config.name, item.id)
        if stage != "judge" and (output is None or output["status"] != "ok"):
            try:
                made = make_output(bench, item, config, ctx)
            except Exception as exc:  # noqa: BLE001 -- recorded; a rerun tries again
                results.put_output(bench.name, config.name, item.id, "failed", {}, f"{type(exc).__name__}: {exc}")
                return "generation_failed", f"{type(exc).__name__}: {exc}"
            results.put_output(bench.name, config.name, item.id, "ok", made)
            output = {"status": "ok", "error": None, **made}
        if stage == "generate":
            return "generated", ""
        if output is None or output["status"] != "ok":
            return "not_generated", output["error"] if output else "no output yet"
        assert judge is not None
        stored = results.result(bench.name, config.name, item.id, judge.identity, bench.prompt_version)
        if stored is not None and stored["status"] == "scored":
            return "scored (stored)", ""
        result = judge_item(bench, judge, item, output, retry_failed=retry_failed)
        results.put_result(bench.name, config.name, item.id, judge.identity, bench.prompt_version, result)
        return result["status"], result.get("error") or ""

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        for future in [pool.submit(one, unit) for unit in units]:
            future.result()
    except BaseException:  # Ctrl-C: drop what has not started; items under way finish
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
