"""``interleave eval ueval|wise|rise``: run a benchmark over one or more configurations, judge it
with any OpenAI-compatible chat model, and write the report.

Resumable: rerun the same command after a crash or Ctrl-C; finished items are skipped, stored
judge answers reused. Progress goes to stderr, a partial report is written every
``--report-every-s`` seconds, and the final one at the end (``<out>/report.md`` and ``.json``).

The judge's API key comes from ``--judge-api-key`` or ``$INTERLEAVE_JUDGE_API_KEY`` (read here,
at the edge, like the run settings' variables in ``graph.context``).

Exit codes: 0 every item scored; 1 some items failed (see the report; a rerun retries them);
2 bad input (data file, configuration or settings); 130 interrupted (rerun to continue).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from checkpoints.run_ids import printable

EXIT_OK, EXIT_FAILURES, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The command's options; with ``subparsers`` it is mounted there as ``eval``, as
    ``interleave eval`` mounts it."""
    from graph.context import Context

    options = dict(
        description="Run UEval, WISE or RISEBench over configurations of the graph (or the bare "
        "generator), judge the outputs and write a side-by-side report.",
        epilog="Configurations: full (planner + critic, 3 generations per step), critic-off "
        "(1 generation, no critic call), bare (the generator alone), or "
        "NAME:setting=value,... e.g. planner-b:planner_model=my-planner or "
        "bare-8:kind=bare,num_inference_steps=8. Exit codes: 0 all scored, 1 some items "
        "failed, 2 bad input, 130 interrupted.",
    )
    if subparsers is not None:
        parser = subparsers.add_parser("eval", **options)
    else:
        parser = argparse.ArgumentParser(prog="interleave eval", **options)
    parser.add_argument(
        "benchmark",
        choices=("ueval", "wise", "rise"),
        help="UEval (interleaved answers, rubric judge), WISE (world-knowledge "
        "text-to-image, WiScore) or RISEBench (reasoning-informed editing)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="benchmark data: a JSON list or JSONL file, or a folder of them "
        "(required, except for WISE_Verified, whose default is the three "
        "data_verified/*_verified.json files of --wise-repo)",
    )
    parser.add_argument(
        "--images-root",
        type=Path,
        default=None,
        help="folder the data's image paths are relative to (RISEBench; default: the data file's folder)",
    )
    protocol = parser.add_argument_group("protocols", "which official scoring to follow")
    protocol.add_argument(
        "--rise-rule",
        default="2026-04",
        choices=("2026-04", "pre-2026-04"),
        help="RISEBench accuracy rule: 2026-04 (gpt_eval.py since commit "
        "ce8cba3: consistency-free samples judged on reasoning and "
        "plausibility; default) or pre-2026-04 (the paper's numbers)",
    )
    protocol.add_argument(
        "--rise-repo",
        type=Path,
        default=None,
        help="your local clone of github.com/PhoenixZ810/RISEBench: the judge "
        "prompts are read from its utils.py (default: ours)",
    )
    protocol.add_argument(
        "--wise-protocol",
        default="verified",
        choices=("verified", "legacy"),
        help="WISE_Verified (binary score, the official default since "
        "2026-04-19; needs --wise-repo) or legacy WISE (three 0-2 scores)",
    )
    protocol.add_argument(
        "--wise-repo",
        type=Path,
        default=None,
        help="your local clone of github.com/PKU-YuanGroup/WISE: the judge "
        "prompt is read from its vllm_eval.py (verified) or "
        "WISE_legacy/gpt_eval.py (legacy)",
    )
    protocol.add_argument(
        "--ueval-repo",
        type=Path,
        default=None,
        help="your local clone of github.com/zlab-princeton/UEval: the judge "
        "prompts are read from its ueval_eval.py (default: ours)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="SPEC",
        help="a configuration to evaluate; repeat for several (default: full)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for results.sqlite, report.md/json and submission files (default: <runs-dir>/evals/<benchmark>)",
    )
    parser.add_argument(
        "--runs-dir",
        default=None,
        help="runs folder for the graph runs and images (default: $INTERLEAVE_RUNS_DIR or ./runs)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--concurrency", type=int, default=2, help="items produced and judged at once (default 2)")
    parser.add_argument(
        "--stage",
        choices=("all", "generate", "judge"),
        default="all",
        help="generate only, judge stored outputs only, or both (default)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="ask the judge again where a stored reply could not be read"
    )
    parser.add_argument(
        "--report-every-s", type=float, default=30.0, help="write the partial report at most this often (default 30)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-item progress lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    judge = parser.add_argument_group("judge", "any OpenAI-compatible chat endpoint with images")
    judge.add_argument(
        "--judge",
        default=None,
        metavar="MODEL",
        help="judge model name as the endpoint serves it (required unless --stage generate)",
    )
    judge.add_argument(
        "--judge-version",
        default=None,
        help="exact judge version recorded with every score (default: the model name); a new version is judged anew",
    )
    judge.add_argument(
        "--judge-base-url", default="http://127.0.0.1:8000/v1", help="judge endpoint (default http://127.0.0.1:8000/v1)"
    )
    judge.add_argument(
        "--judge-api-key", default=None, help="judge API key (default: $INTERLEAVE_JUDGE_API_KEY, else EMPTY)"
    )
    judge.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once (default 8)")
    judge.add_argument(
        "--judge-retries", type=int, default=2, help="re-asks of an unreadable reply before it is recorded as failed"
    )
    judge.add_argument("--judge-max-tokens", type=int, default=2048, help="most tokens per judge reply (default 2048)")
    judge.add_argument(
        "--judge-timeout-s", type=float, default=120.0, help="seconds to wait for one judge reply (default 120)"
    )
    judge.add_argument(
        "--judge-image-max-pixels",
        type=int,
        default=1024 * 1024,
        help="larger images are downscaled (aspect kept) before the judge sees them (default 1048576 = 1024x1024)",
    )
    from graph.cli.main import add_settings

    add_settings(parser, [f.name for f in dataclasses.fields(Context) if f.name not in ("runs_dir", "review_plan")])
    return parser


def _progress(quiet: bool) -> Any:
    def show(event: Any) -> None:
        if not quiet:
            detail = f" - {event.detail[:160]}" if event.detail else ""
            print(
                f"[{event.done}/{event.total}] {event.config} {event.item}: {event.status}{detail}",
                file=sys.stderr,
                flush=True,
            )

    return show


def _summary(report: dict[str, Any]) -> None:
    for section in report["configs"]:
        head = section["metrics"]["headline"]
        shown = ", ".join(
            f"{k} {head.get(k):.4g}" if head.get(k) is not None else f"{k} n/a" for k in report["headline"]
        )
        counts = section["counts"]
        print(
            f"{section['name']}: {shown} ({counts['scored'] + counts['partial']} scored, "
            f"{counts['judge_failed'] + counts['generation_failed']} failed)"
        )


def main(argv: list[str] | None = None) -> int:
    return run(make_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Evaluate as the parsed options say; the exit code."""
    from tools.logs import configure_logging

    configure_logging(logging.INFO if args.verbose else logging.WARNING)
    from evals.benchmarks import report, rise, ueval, wise
    from evals.benchmarks.configs import parse_config
    from evals.benchmarks.driver import evaluate
    from evals.benchmarks.store import ResultStore
    from graph.context import Context, default_runs_dir

    try:
        bench = {
            "ueval": lambda: ueval.benchmark(args.ueval_repo),
            "wise": lambda: wise.benchmark(args.wise_protocol, args.wise_repo),
            "rise": lambda: rise.benchmark(args.rise_rule, args.rise_repo),
        }[args.benchmark]()
        if args.data is None and not (args.benchmark == "wise" and args.wise_protocol == "verified"):
            raise ValueError("--data PATH is required (the benchmark's data file or folder)")
        if args.stage != "generate" and not args.judge:
            raise ValueError("--judge MODEL is required to judge; or pass --stage generate")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit {args.limit} must be at least 1")
        configs = [parse_config(spec) for spec in args.config or ["full"]]
        items = bench.load(args.data, args.images_root)[: args.limit]
        runs_dir = args.runs_dir or default_runs_dir()
        names = [f.name for f in dataclasses.fields(Context) if f.name != "runs_dir"]
        ctx = Context(runs_dir=runs_dir, **{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    except ValueError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # may quote a model or a file
        return EXIT_BAD_INPUT
    out_dir = args.out or Path(runs_dir) / "evals" / bench.name
    results = ResultStore(out_dir / "results.sqlite")
    judge, judge_info = None, None
    if args.judge:
        from tools.llm.chat import openai_model

        key = args.judge_api_key or os.environ.get("INTERLEAVE_JUDGE_API_KEY") or "EMPTY"
        model = openai_model(args.judge_base_url, key, args.judge, args.judge_max_tokens, 0.0, args.judge_timeout_s, 2)
        from tools.judge.judge import Judge

        # The judge's answers are cached in the results file, beside the outputs and scores.
        judge = Judge(
            model,
            model_name=args.judge,
            version=args.judge_version or args.judge,
            store_root=runs_dir,
            cache_path=results.path,
            max_concurrency=args.judge_concurrency,
            retries=args.judge_retries,
            image_max_pixels=args.judge_image_max_pixels,
        )
        judge_info = {
            "model": args.judge,
            "version": judge.version,
            "identity": judge.identity,
            "base_url": args.judge_base_url,
        }

    def write() -> dict[str, Any]:
        built = report.build_report(
            bench,
            items,
            configs,
            results,
            judge=judge_info,
            out_dir=out_dir,
            runs_dir=Path(runs_dir),
            data=str(args.data or "data_verified/ of --wise-repo"),
        )
        report.write_report(built, out_dir)
        return built

    try:
        evaluate(
            bench,
            items,
            configs,
            ctx,
            judge,
            results,
            stage=args.stage,
            concurrency=args.concurrency,
            on_progress=_progress(args.quiet),
            on_checkpoint=write,
            checkpoint_every_s=args.report_every_s,
            retry_failed=args.retry_failed,
        )
    except KeyboardInterrupt:
        write()
        print(
            f"interrupted; partial report in {out_dir / 'report.md'}; rerun the same command to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except ValueError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # may quote a model or a file
        return EXIT_BAD_INPUT
    final = write()
    _summary(final)
    print(f"report: {out_dir / 'report.md'}")
    results.close()
    if judge is not None:
        judge.close()
    failed = any(s["counts"][k] for s in final["configs"] for k in ("partial", "judge_failed", "generation_failed"))
    return EXIT_FAILURES if failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
