"""Datagen throughput with tiny models on the CPU, concurrency 1 vs 8, and the judge cache on a re-run.

    python -m evals.perf.datagen [--requests 8] [--size 64]

Runs the same requests as two batches (concurrency 1, then 8) through the real graph with the
tiny random klein pipeline and scripted teacher servers on 127.0.0.1, and prints trajectories per
minute and the ratio. Then scores every attempt with a scripted judge twice and prints how many
judge requests the second pass made (the target is none: a 100% cache hit rate).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per batch (default 8)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args(argv)

    from tools.judge.judge import judge_from_settings
    from graph.runs.batch import run_batch
    from graph.runs.demo import demo_context
    from tools.doubles import demo_script
    from tools.generator.diffusion import silence_library_progress_bars
    from tools.doubles.scripted_chat import ScriptedChatServer
    from tools.doubles.tiny_klein import save_tiny_klein
    from training.data.scoring import score_runs

    silence_library_progress_bars()
    with (
        tempfile.TemporaryDirectory() as root,
        ScriptedChatServer(demo_script.respond) as teacher,
        ScriptedChatServer(lambda body: '<answer>{"scores": [7, 8], "reasoning": "ok"}</answer>') as judge_server,
    ):
        runs_dir = str(Path(root) / "runs")
        pipeline = save_tiny_klein(Path(root) / "tiny-klein")
        context = demo_context(runs_dir, teacher.base_url, pipeline, width=args.size, height=args.size)
        items = [{"id": f"r{n}", "request": f"How do I make thing number {n}?"} for n in range(args.requests)]
        run_batch(items[:1], context, batch="warmup", concurrency=1)  # loads the pipeline once
        rates = {}
        for concurrency in (1, 8):
            started = time.perf_counter()
            report = run_batch(items, context, batch=f"c{concurrency}", concurrency=concurrency)
            seconds = time.perf_counter() - started
            assert len(report.finished) == args.requests, report.failed
            rates[concurrency] = args.requests / seconds * 60
        with judge_from_settings(
            judge_server.base_url,
            "k",
            "scripted-judge",
            store_root=runs_dir,
            cache_path=Path(runs_dir) / "judge-cache.sqlite",
        ) as judge:
            first = score_runs(runs_dir, judge, batch="c8")
            asked_first = len(judge_server.requests)
        # A re-run as a new process would see it: a fresh Judge over the same cache, and the scores
        # table emptied so that every attempt is asked for again.
        import sqlite3

        with sqlite3.connect(Path(runs_dir) / "interleave.sqlite") as conn:
            conn.execute("DELETE FROM attempt_scores")
        with judge_from_settings(
            judge_server.base_url,
            "k",
            "scripted-judge",
            store_root=runs_dir,
            cache_path=Path(runs_dir) / "judge-cache.sqlite",
        ) as judge:
            second = score_runs(runs_dir, judge, batch="c8")
        asked_again = len(judge_server.requests) - asked_first
    print(f"tiny klein {args.size}², scripted teacher and judge, {args.requests} requests per batch")
    print(f"  concurrency 1: {rates[1]:7.1f} trajectories/min")
    print(f"  concurrency 8: {rates[8]:7.1f} trajectories/min   {rates[8] / rates[1]:.2f}x")
    print(
        f"  scoring: {first.scored} attempts, {asked_first} judge requests; re-scoring from the "
        f"cache: {second.scored} attempts, {asked_again} judge requests "
        f"({100.0 * (1 - asked_again / max(asked_first, 1)):.0f}% cache hits)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
