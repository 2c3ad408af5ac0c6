"""The ``interleave`` command line.

Exit codes: 0 done; 1 the run failed and is saved (``interleave resume RUN_ID`` continues it);
2 bad input (nothing was written); 3 unknown run id or runs folder; 4 a model endpoint is
unreachable before the run starts (nothing was written); 5 the run waits for plan review;
130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import json
import logging
import os
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from graph.cli.parser import LazyParser, accept_global_options_anywhere, add_global_options, add_settings, as_cli
from graph.context import RESUME_OVERRIDES, Context, default_runs_dir

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_AWAITING_REVIEW = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as other command-line tools end when their reader goes


def say_error(message: object, *, cli_words: bool = True) -> None:
    """``error: ...`` on stderr. The message may quote a model server, a stored row or a file,
    so control characters are shown escaped (``checkpoints.run_ids.printable``); with
    ``cli_words`` run settings are named as their flags (``as_cli``). A mounted script's own
    messages name its own flags: ``cli_words=False``."""
    from checkpoints.run_ids import printable

    text = as_cli(str(message)) if cli_words else str(message)
    print(f"error: {printable(text)}", file=sys.stderr)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interleave",
        description="Agentic interleaved text-image generation: a planner VLM writes the plan, a "
        "diffusers model draws and edits each step, a critic VLM judges every image "
        "and asks for regeneration with a refined prompt.",
        epilog="Exit codes: 0 done, 1 run failed (saved; resume it), 2 bad input, 3 unknown run, "
        "4 endpoint unreachable, 5 waiting for plan review, 130 interrupted.",
    )
    add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=LazyParser)
    setting_names = [f.name for f in dataclasses.fields(Context) if f.name != "runs_dir"]

    run = commands.add_parser(
        "run",
        help="generate an interleaved document for a request",
        description="Plan, generate and critique a new run; prints where the document is written.",
    )
    run.add_argument("request", help='what to show, e.g. "How do I fold a paper crane?"')
    run.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an input image (repeat for several; a file or a data URL). A request with "
        "images is in guidance mode: the planner answers about them or continues "
        "the sequence. <image> markers in the request place them in order; "
        "without markers they follow the text.",
    )
    run.add_argument("--run-id", default=None, help="id for the new run (default: time + random)")
    run.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip checking that the planner and critic endpoints answer before starting",
    )
    add_settings(run, setting_names)

    resume = commands.add_parser(
        "resume",
        help="continue an interrupted or failed run",
        description="Continue a run from its last checkpoint with its stored settings; completed steps are not redone.",
    )
    resume.add_argument("run_id")
    answer = resume.add_mutually_exclusive_group()
    answer.add_argument(
        "--approve-plan", action="store_true", help="for a run paused for plan review: keep the plan and go on"
    )
    answer.add_argument(
        "--plan-file",
        metavar="JSON",
        help="for a run paused for plan review: use this plan instead (a JSON list of "
        'steps, or {"execution_plan": [...]}, as `interleave show RUN_ID --json` prints)',
    )
    add_settings(resume, list(RESUME_OVERRIDES), stored=True)

    history = commands.add_parser(
        "history",
        help="list a run's checkpoints, oldest first",
        description="Every checkpoint of a run: which node produced it, "
        "what runs next, the step and attempt it stands at.",
    )
    history.add_argument("run_id")
    history.add_argument("--json", action="store_true", help="print the checkpoints as JSON")

    fork = commands.add_parser(
        "fork",
        help="start a new run from a step of an existing run",
        description="Copy a run's state as it stood before step N was "
        "generated into a new run (sharing its images), "
        "optionally with a new prompt for step N, and continue.",
    )
    fork.add_argument("run_id")
    fork.add_argument("--at", type=int, required=True, metavar="STEP", help="the step to redo (1-based)")
    fork.add_argument("--prompt", default=None, help="new generator prompt for that step")
    fork.add_argument("--run-id", dest="new_run_id", default=None, help="id for the new run")
    add_settings(fork, list(RESUME_OVERRIDES) + ["seed", "max_generations_per_step"], stored=True)

    show = commands.add_parser("show", help="show one run's status, plan and attempts")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true", help="print the registry row and state as JSON")

    listing = commands.add_parser("list", help="list runs, newest first")
    listing.add_argument("--limit", type=int, default=50, help="most runs to list (default 50)")

    export = commands.add_parser("export", help="write a finished run's document as html, md or json")
    export.add_argument("run_id")
    export.add_argument("--format", choices=("html", "md", "json"), default="html")
    export.add_argument(
        "--output", default=None, help="file to write (default: print the path of the document in the run folder)"
    )

    demo = commands.add_parser(
        "demo",
        help="offline demo with random-weight models (images are noise)",
        description="Runs the whole loop offline: a tiny random-weight FLUX.2-klein pipeline and "
        "scripted planner/critic replies from a local OpenAI-compatible server. The "
        "images are noise because the weights are random; see the README for real models.",
    )
    demo.add_argument("--request", default=None, help="the request (default: fold a paper crane)")

    from graph.cli.data import add_commands

    add_commands(commands, add_settings, setting_names)
    from graph.cli.serve import add_commands as add_serve_commands

    add_serve_commands(commands)
    accept_global_options_anywhere(parser)
    return parser


def _settings(args: argparse.Namespace, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _runs_dir(args: argparse.Namespace) -> str:
    return args.runs_dir or default_runs_dir()


def _print_plan(plan: list[dict]) -> None:
    for step in plan:
        print(f"  {step['step_number']}. {step['step_name']}: {step['prompt']}")


def _review_in_terminal(outcome: Any) -> Any:
    """Ask the user at the terminal; returns a review answer, or None to decide later."""
    import os
    import subprocess
    import tempfile

    from nodes.review import reviewed_plan

    plan = outcome.review["plan"]
    while True:
        print(f"plan of run {outcome.run_id}:")
        _print_plan(plan)
        choice = input("[a]pprove, [e]dit in $EDITOR, or [q]uit and review later? ").strip().lower()
        if choice in ("a", "approve", "y", "yes"):
            return {"approve": True}
        if choice in ("q", "quit", ""):
            return None
        if choice in ("e", "edit"):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
                json.dump(plan, tmp, indent=2, ensure_ascii=False)
            subprocess.run([os.environ.get("EDITOR", "vi"), tmp.name], check=False)
            try:
                edited = json.loads(Path(tmp.name).read_text(encoding="utf-8"))
                reviewed_plan(
                    {"plan": edited}, outcome.review.get("input_images", 0), outcome.review.get("max_plan_steps")
                )
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                say_error(f"{exc}; edit again", cli_words=False)
                continue
            finally:
                Path(tmp.name).unlink(missing_ok=True)
            return {"plan": edited}


def _report(outcome: Any) -> int:
    if outcome.status == "awaiting_review":
        print(f"run {outcome.run_id} waits for plan review:")
        _print_plan(outcome.review["plan"])
        print(f"continue with: interleave resume {outcome.run_id} --approve-plan (or --plan-file edited.json)")
        return EXIT_AWAITING_REVIEW
    if outcome.status == "finished":
        print(f"run {outcome.run_id} finished")
        if outcome.document_dir:
            print(f"document: {Path(outcome.document_dir) / 'document.html'}")
        return EXIT_OK
    say_error(f"run {outcome.run_id} failed: {outcome.error}")
    print(f"the run is saved; fix the cause, then: interleave resume {outcome.run_id}", file=sys.stderr)
    return EXIT_RUN_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    from graph.cli.progress import ProgressPrinter
    from graph.runs.runner import start_run

    context = Context(
        runs_dir=_runs_dir(args),
        **_settings(args, [f.name for f in dataclasses.fields(Context) if f.name != "runs_dir"]),
    )
    with ProgressPrinter() as printer:
        outcome = start_run(
            args.request,
            context,
            images=args.image,
            run_id=args.run_id,
            preflight=not args.no_preflight,
            on_event=printer,
        )
    if outcome.status == "awaiting_review" and sys.stdin.isatty():
        answer = _review_in_terminal(outcome)
        if answer is not None:
            from graph.runs.runner import resume_run

            with ProgressPrinter() as printer:
                outcome = resume_run(outcome.run_id, context.runs_dir, review=answer, on_event=printer)
    return _report(outcome)


def _cmd_resume(args: argparse.Namespace) -> int:
    from graph.cli.progress import ProgressPrinter
    from graph.runs.runner import resume_run

    review = {"approve": True} if args.approve_plan else None
    if args.plan_file:
        try:
            review = {"plan": json.loads(Path(args.plan_file).read_text(encoding="utf-8"))}
        except OSError as exc:
            raise ValueError(f"cannot read --plan-file {args.plan_file}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--plan-file {args.plan_file} is not valid JSON ({exc})") from None
    from graph.runs.demo import demo_endpoints

    with (
        demo_endpoints(_runs_dir(args), args.run_id, _settings(args, RESUME_OVERRIDES)) as overrides,
        ProgressPrinter() as printer,
    ):
        outcome = resume_run(args.run_id, _runs_dir(args), overrides=overrides, review=review, on_event=printer)
    return _report(outcome)


def _cmd_history(args: argparse.Namespace) -> int:
    from graph.runs.history import run_history

    rows = run_history(_runs_dir(args), args.run_id)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    print(f"{'#':>3}  {'checkpoint':<36}  {'after':<9} {'next':<9} step   attempts  last verdict")
    for r in rows:
        step = f"{r['step']}/{r['steps_total']}" if r["step"] else "-"
        verdict = {None: "-", True: "passed", False: "rejected"}.get(r["last_verdict"], "?")
        last = f"({r['last_attempt']})" if r["last_attempt"] else ""
        print(
            f"{r['index']:>3}  {r['checkpoint_id']:<36}  {r['after']:<9} {','.join(r['next']) or '-':<9} "
            f"{step:<6} {r['attempts']:>3} {last:<6} {verdict}"
        )
    return EXIT_OK


def _cmd_fork(args: argparse.Namespace) -> int:
    from graph.cli.progress import ProgressPrinter
    from graph.runs.history import fork_run

    overrides = _settings(args, list(RESUME_OVERRIDES) + ["seed", "max_generations_per_step"])
    from graph.runs.demo import demo_endpoints

    with demo_endpoints(_runs_dir(args), args.run_id, overrides) as overrides, ProgressPrinter() as printer:
        outcome = fork_run(
            _runs_dir(args),
            args.run_id,
            args.at,
            prompt=args.prompt,
            overrides=overrides,
            new_id=args.new_run_id,
            on_event=printer,
        )
    print(f"forked {args.run_id} at step {args.at} into {outcome.run_id}")
    return _report(outcome)


def _cmd_demo(args: argparse.Namespace) -> int:
    from graph.runs.demo import DEFAULT_REQUEST, run_demo
    from graph.cli.progress import ProgressPrinter

    print("offline demo: random-weight models, so the images are noise; the loop is real", file=sys.stderr)
    with ProgressPrinter() as printer:
        outcome = run_demo(_runs_dir(args), args.request or DEFAULT_REQUEST, on_event=printer)
    return _report(outcome)


def _cmd_list(args: argparse.Namespace) -> int:
    from checkpoints.registry import UNREADABLE, RunRegistry
    from checkpoints.run_ids import printable
    from checkpoints.saver import connect

    with closing(connect(_runs_dir(args), create=False)) as conn:
        rows = RunRegistry(conn).list(args.limit)
    if not rows:
        print("no runs yet")
    for row in rows:
        if row["status"] == UNREADABLE:  # a tampered row: said, without hiding the others
            print(printable(f"{row['run_id']}  {UNREADABLE:<11}  {row['error']}"))
            continue
        origin = (
            f"  (fork of {row['parent_run_id']} at step {row['forked_at_step']})" if row.get("parent_run_id") else ""
        ) + ("  (LangGraph server)" if row.get("origin") == "server" else "")
        print(
            printable(
                f"{row['run_id']}  {row['status']:<11}  {row['steps_done']}/"
                f"{row['steps_total']} steps  {row['generations']} images  "
                f"{row['created_at']}  {row['request'][:60]}{origin}"
            )
        )
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from checkpoints.run_ids import printable
    from graph.runs.inspection import run_details

    def print(text: str = "") -> None:  # model and user text: no control characters reach the terminal
        builtins.print(printable(text))

    details = run_details(_runs_dir(args), args.run_id)
    if args.json:
        print(json.dumps(details, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    row, state = details["run"], details["state"]
    print(
        f"run {row['run_id']}: {row['status']} · {row['steps_done']}/{row['steps_total']} steps · "
        f"{row['generations']} generations · {row['critic_calls']} critic calls · "
        f"{row['rejections']} rejected"
    )
    print(f"request: {row['request']}")
    if row.get("parent_run_id"):
        print(f"forked from {row['parent_run_id']} at step {row['forked_at_step']}")
    if row.get("error"):
        print(f"error: {row['error']}")
    if row.get("origin") == "server":
        print(
            f"made through the LangGraph server: its checkpoints are the server's (thread "
            f"{row['run_id']}; LangGraph Studio shows them)"
            + ("; below as its document holds them" if state.get("plan") else "")
        )
    for endpoint, form in state.get("structured_output", {}).items():  # what auto settled on
        print(f"structured output at {endpoint}: {form} (auto)")
    for step in state.get("plan", []):
        print(f"  {step['step_number']}. {step['step_name']}: {step['prompt']}")
        for a in [a for a in state.get("attempts", []) if a["step_number"] == step["step_number"]]:
            verdict = a["verdict"]
            said = (
                "accepted without critic"
                if verdict is None and a["last_allowed"]
                else "pending"
                if verdict is None
                else "passed"
                if verdict["success"]
                else "rejected"
                if verdict["success"] is False
                else f"unusable: {verdict['error']}"
            )
            print(f"     attempt {a['attempt']} seed {a['seed']}: {said} · {a['image']['path']}")
    if row.get("document_dir"):
        print(f"document: {Path(row['document_dir']) / 'document.html'}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from graph.runs.inspection import export_document

    print(export_document(_runs_dir(args), args.run_id, args.format, args.output))
    return EXIT_OK


def _with_context(handler: Any) -> Any:
    """A command handler that gets the run settings from its flags and the environment."""

    def call(args: argparse.Namespace) -> int:
        names = [f.name for f in dataclasses.fields(Context) if f.name != "runs_dir"]
        return handler(args, Context(runs_dir=_runs_dir(args), **_settings(args, names)))

    return call


def _cmd_script(args: argparse.Namespace) -> int:
    """A mounted script's command (``graph.cli.parser.LazyParser``: ``train sft|grpo``,
    ``datagen prompts``, ``eval``). A global option given before the command (``--runs-dir``,
    ``-v``) reaches a script that has it and was not given it after. The script sets up its own
    logging, and its messages name its own flags (``--dataset_name``): shown as they are."""
    script_args = args.script_args
    if isinstance(script_args, argparse.Namespace):  # TRL's scripts parse into dataclasses
        for name in ("runs_dir", "verbose"):
            if hasattr(script_args, name) and not getattr(script_args, name):
                setattr(script_args, name, getattr(args, name))
    try:
        return args.mount.run(script_args)
    except ValueError as exc:
        say_error(exc, cli_words=False)
        return EXIT_BAD_INPUT


def _data_command(name: str) -> Any:
    def call(args: argparse.Namespace) -> int:
        from graph.cli import data as cli_data

        return _with_context(getattr(cli_data, name))(args)

    return call


def _cmd_serve(args: argparse.Namespace) -> int:
    from graph.cli.serve import cmd_serve

    return cmd_serve(args)


COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "show": _cmd_show,
    "list": _cmd_list,
    "export": _cmd_export,
    "demo": _cmd_demo,
    "history": _cmd_history,
    "fork": _cmd_fork,
    "batch": _data_command("cmd_batch"),
    "datagen": _data_command("cmd_datagen"),
    "serve": _cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from graph.cli.progress import quiet_model_loading
    from tools.logs import configure_logging

    quiet_model_loading()  # every command that loads a model (run, resume, fork, batch, eval, ...)
    try:
        args = make_parser().parse_args(argv)
    except ValueError as exc:  # a mounted script's settings: TRL checks its configs as it parses
        say_error(exc, cli_words=False)
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:  # a TRL script's --config recipe
        say_error(exc, cli_words=False)
        return EXIT_NOT_FOUND
    # Before any command, mounted scripts included: every record passes the credential filter.
    configure_logging(logging.INFO if args.verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    if getattr(args, "mount", None) is not None:
        return _cmd_script(args)
    from checkpoints.registry import RunNotFoundError
    from graph.runs.preflight import EndpointUnreachableError

    from graph.cli.interrupt import StopOnInterrupt

    stopper = StopOnInterrupt(_runs_dir(args))
    try:
        with stopper:
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        stopper.report()
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `interleave show RUN | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # flushing at exit would raise again
        return EXIT_BROKEN_PIPE
    except EndpointUnreachableError as exc:
        say_error(exc)
        return EXIT_UNREACHABLE
    except (RunNotFoundError, FileNotFoundError) as exc:
        say_error(exc)
        return EXIT_NOT_FOUND
    except ValueError as exc:
        say_error(exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
