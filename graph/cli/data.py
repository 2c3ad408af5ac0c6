"""The ``interleave`` commands for many runs and for training data: ``batch`` and ``datagen``,
plus the scripts mounted with their own parsers (``make_parser(subparsers)``, built only when
the command is used: ``graph.cli.parser.LazyParser``): ``datagen prompts``, ``train sft|grpo``
(TRL's parsers) and ``eval``.

    interleave batch --prompts FILE [--name NAME] [--concurrency N] [run settings]
    interleave datagen prompts --out FILE --teacher-base-url URL --teacher-model NAME ...
    interleave datagen run --prompts FILE [--name NAME] [--concurrency N] [run settings]
    interleave datagen score --batch NAME --judge-base-url URL --judge-model NAME
    interleave datagen export --batch NAME --out DIR --judge-model NAME [thresholds]
    interleave train sft|grpo --config RECIPE [overrides]
    interleave eval ueval|wise|rise --data PATH --judge-... [options]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from graph.cli.parser import LazyParser
from graph.context import Context

EXIT_OK, EXIT_SOME_FAILED = 0, 1
# `train sft|grpo`: TRL scripts.
_TRL_SCRIPT = {
    "parser_class": "trl:TrlParser",
    "hint": " (start from a recipe: --config training/recipes/…yaml; on a machine without a GPU add "
    "--use_cpu true --bf16 false)",
}


def _add_batch_options(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    parser.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help="JSONL with one request per line ({id, request, images?}) or plain text "
        "(one request per line); malformed lines are reported and skipped",
    )
    parser.add_argument(
        "--name",
        default=default_name,
        help="batch name: run ids are NAME-<request id>; running the same batch again "
        "skips finished requests and resumes the others"
        + (" (default: the prompt file's name)" if default_name is None else f" (default: {default_name})"),
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="runs at once in this process; they share one generator pipeline and batch their generations (default 4)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse the whole prompt file if any line is malformed (default: report "
        "each bad line with its number and skip it)",
    )


def add_commands(
    commands: Any, add_settings: Callable[[argparse.ArgumentParser, list[str]], None], setting_names: list[str]
) -> None:
    batch = commands.add_parser(
        "batch",
        help="run many requests at once, resumably",
        description="Runs every request of a prompt file through the graph, several at once. Each "
        "request is an ordinary run (see `interleave list`); running the same batch again "
        "skips finished requests and resumes failed or interrupted ones.",
    )
    _add_batch_options(batch, None)
    add_settings(batch, setting_names)

    datagen = commands.add_parser(
        "datagen",
        help="build training data: prompts, teacher runs, scores, datasets",
        description="The data pipeline of SPEC §5: `prompts` asks a teacher LLM for requests per "
        "taxonomy subcategory; `run` runs them with teacher planner/critic endpoints; "
        "`score` judges every attempt; `export` writes planner SFT, critic SFT and critic "
        "RL datasets. `interleave datagen prompts --help` lists its own options.",
    )
    steps = datagen.add_subparsers(dest="datagen_command", required=True, metavar="STEP", parser_class=LazyParser)
    prompts_help = "ask a teacher LLM for requests per subcategory (own --help)"
    steps.add_parser("prompts", help=prompts_help, script="training.data.prompt_sets")
    run = steps.add_parser("run", help="run a prompt set with the teacher models (a resumable batch)")
    _add_batch_options(run, "datagen")
    add_settings(run, setting_names)

    score = steps.add_parser(
        "score",
        help="judge every attempt of a batch's finished runs",
        description="Scores each attempt (SC, PQ, overall) with a judge model "
        "against the step's plan prompt. Resumable; cached.",
    )
    score.add_argument("--batch", default="datagen", help="batch name (default: datagen)")
    _add_judge_options(score)
    score.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")

    steps.add_parser(
        "export",
        help="write the SFT and RL datasets of a scored batch",
        description="Writes planner_sft, critic_sft and critic_rl (Hugging Face "
        "datasets with images) and prints what each filter kept.",
        populate=_add_export_options,
    )

    train = commands.add_parser(
        "train",
        help="SFT / GRPO training with TRL (own --help: train sft --help)",
        description="interleave train sft|grpo --config RECIPE [TRL flags]; see `interleave train "
        "sft --help` and training/recipes/.",
    )
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE", parser_class=LazyParser)
    for stage, text in (("sft", "supervised fine-tuning (TRL SFTTrainer)"), ("grpo", "GRPO of the critic")):
        stages.add_parser(stage, help=f"{text} (own --help)", script=f"training.{stage}", **_TRL_SCRIPT)
    commands.add_parser("eval", help="UEval, WISE, RISEBench harnesses (own --help)", script="evals.benchmarks.cli")


def _add_export_options(export: argparse.ArgumentParser) -> None:
    """``datagen export``'s options; its thresholds come from ``training.data.export.ExportOptions``,
    imported only when this command is used (it pulls in pandas, ~2 s)."""
    export.add_argument("--batch", default="datagen", help="batch name (default: datagen)")
    export.add_argument("--out", required=True, help="folder for the three datasets")
    export.add_argument("--judge-model", required=True, help="whose scores to use (as in `score`)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace datasets already in --out (default: refuse, nothing is written)",
    )
    export.add_argument(
        "--strict",
        action="store_true",
        help="fail if any run of the batch is unfinished or unreadable, or any "
        "attempt is unscored (default: leave them out and count them)",
    )
    from training.data.export import ExportOptions

    for item in dataclasses.fields(ExportOptions):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            export.add_argument(
                "--no-" + item.name.replace("_", "-"),
                dest=item.name,
                action="store_false",
                default=True,
                help="do not: " + item.metadata["help"],
            )
        else:
            kind = float if item.type == "float" else int
            export.add_argument(
                flag,
                dest=item.name,
                type=kind,
                default=item.default,
                help=f"{item.metadata['help']} (default {item.default})",
            )


def _add_judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge-base-url", required=True, help="OpenAI-compatible judge endpoint")
    parser.add_argument("--judge-model", required=True, help="judge model name")
    parser.add_argument("--judge-api-key", default=None, help="API key (default: $INTERLEAVE_JUDGE_API_KEY or EMPTY)")


def _prompt_items(path: str, strict: bool = False) -> list[dict]:
    from training.data.prompt_sets import read_prompt_file

    rows, problems = read_prompt_file(path)
    for problem in problems:
        print(f"{'bad' if strict else 'skipped'}: {path} {problem}", file=sys.stderr)
    if problems and strict:
        raise ValueError(
            f"{path} has {len(problems)} malformed line(s) (listed above); fix them or drop --strict to skip them"
        )
    if not rows:
        raise ValueError(f"{path} holds no usable request ({len(problems)} problem(s) above)")
    return rows


def cmd_batch(args: argparse.Namespace, context: Context) -> int:
    from graph.runs.batch import run_batch

    items = _prompt_items(args.prompts, args.strict)
    name = args.name or Path(args.prompts).stem

    from graph.cli.progress import CountProgress

    counter = CountProgress("runs")
    print(f"batch {name}: {len(items)} request(s), {args.concurrency} at a time", file=sys.stderr, flush=True)

    def progress(done: int, total: int, run_id: str, outcome: str) -> None:
        counter.line(done, total, f"{run_id}: {outcome}")

    report = run_batch(items, context, batch=name, concurrency=args.concurrency, on_progress=progress)
    print(
        f"batch {name}: {len(report.finished)} finished, {len(report.skipped)} already finished, "
        f"{len(report.failed)} failed, {len(report.waiting)} waiting for plan review"
    )
    for run_id, error in report.failed.items():
        print(f"  failed {run_id}: {error}")
    if report.failed:
        print(
            f"run the same command again to resume them (interleave {args.command} --prompts "
            f"{args.prompts} --name {name})"
        )
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def cmd_datagen(args: argparse.Namespace, context: Context) -> int:
    import os

    if args.datagen_command == "run":
        return cmd_batch(args, context)
    if args.datagen_command == "score":
        from graph.cli.progress import CountProgress
        from tools.judge.judge import judge_from_settings
        from training.data.scoring import score_runs

        key = args.judge_api_key or os.environ.get("INTERLEAVE_JUDGE_API_KEY", "EMPTY")
        runs_dir = context.runs_dir
        with judge_from_settings(
            args.judge_base_url,
            key,
            args.judge_model,
            store_root=runs_dir,
            cache_path=Path(runs_dir) / "judge-cache.sqlite",
            max_concurrency=args.concurrency,
        ) as judge:
            counter = CountProgress("judged")
            report = score_runs(runs_dir, judge, batch=args.batch, on_progress=counter.update)
            counter.finish()
        print(
            f"runs {report.runs}, attempts {report.attempts}: {report.already_scored} scored "
            f"before, {report.scored} scored now, failed {report.failed or 0}"
        )
        for run_id, why in report.skipped_runs.items():
            print(f"  left out {run_id}: {why}")
        return EXIT_SOME_FAILED if report.failed else EXIT_OK
    from tools.judge.prompts import JUDGE_PROMPT_VERSION
    from training.data.export import ExportOptions, export

    options = ExportOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportOptions)})
    report = export(
        context.runs_dir,
        args.out,
        judge_model=args.judge_model,
        judge_prompt_version=JUDGE_PROMPT_VERSION,
        batch=args.batch,
        options=options,
        overwrite=args.overwrite,
        strict=args.strict,
    )
    print("\n".join(report.lines()))
    print(f"datasets written under {args.out}")
    return EXIT_OK
