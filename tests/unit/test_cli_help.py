"""`interleave ... --help` as a new user reads it: settings grouped by concern with their
defaults and choices, global options accepted before or after the command, and an answer that
comes at once (nothing heavy imported)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from graph.cli.main import make_parser
from graph.cli.parser import GROUPS, group_of
from graph.context import Context

REPO = Path(__file__).resolve().parents[2]


def run_help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as stop:
        make_parser().parse_args([*command, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare words


def sections(text: str) -> list[str]:
    return [title for title, *_ in GROUPS if f" {title}: " in f" {text} "]


def test_run_help_groups_settings_by_concern_with_defaults_and_choices(capsys):
    text = run_help(capsys, "run")
    assert text.startswith("usage: interleave run [options] request")
    assert sections(text) == ["planner and critic", "generator", "loop"]
    # the order of the groups: models first, then the generator, then the loop
    assert text.index("planner and critic:") < text.index("generator:") < text.index("loop:")
    assert "--seed N Run seed; each step and attempt derives its own seed from it. (default: 0)" in text
    assert "--critic-unparsed {regenerate,accept}" in text
    assert "(default: regenerate)" in text
    assert "--vlm-fast-decode, --no-vlm-fast-decode" in text and "(default: on)" in text
    assert "--planner-base-url URL" in text
    assert "(default: http://127.0.0.1:9/v1, from $INTERLEAVE_PLANNER_BASE_URL)" in text
    assert "--runs-dir RUNS_DIR" in text  # the global option is listed with the command too
    # every setting of the run is in the help, each with its default
    for item in dataclasses.fields(Context):
        if item.name != "runs_dir":
            assert "--" + item.name.replace("_", "-") in text
    assert text.count("(default: ") >= len(dataclasses.fields(Context)) - 1


def test_every_setting_has_a_named_group():
    assert {group_of(f.name) for f in dataclasses.fields(Context) if f.name != "runs_dir"} == {
        title for title, *_ in GROUPS
    }


def test_secrets_are_never_shown_even_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("INTERLEAVE_CRITIC_API_KEY", "sk-very-secret")
    monkeypatch.setenv("INTERLEAVE_SEED", "7")
    text = run_help(capsys, "run")
    assert "sk-very-secret" not in text
    assert "(default: $INTERLEAVE_CRITIC_API_KEY or EMPTY)" in text
    assert "(default: 7, from $INTERLEAVE_SEED)" in text


def test_resume_and_fork_say_their_defaults_are_the_stored_settings(capsys):
    for command in (["resume"], ["fork"]):
        text = run_help(capsys, *command)
        assert "--planner-base-url URL" in text
        assert "(default: as stored with the run)" in text
        assert "(default: http://" not in text, command


@pytest.mark.parametrize(
    "argv",
    [
        ["--runs-dir", "D", "run", "x"],
        ["run", "x", "--runs-dir", "D"],
        ["run", "--runs-dir", "D", "x", "-v"],
        ["-v", "run", "x", "--runs-dir=D"],
    ],
)
def test_global_options_are_accepted_before_or_after_the_command(argv):
    args = make_parser().parse_args(argv)
    assert args.runs_dir == "D" and args.request == "x"
    assert args.verbose == ("-v" in argv)


def test_global_options_reach_nested_commands():
    args = make_parser().parse_args(
        ["datagen", "score", "--judge-base-url", "http://h/v1", "--judge-model", "j", "--runs-dir", "D"]
    )
    assert args.runs_dir == "D"
    args = make_parser().parse_args(["list"])
    assert args.runs_dir is None and args.verbose is False


def test_datagen_export_options_still_appear_when_asked_for(capsys):
    text = run_help(capsys, "datagen", "export")
    assert "--out OUT" in text and "--judge-model" in text and "(default " in text


def test_mounted_scripts_answer_with_their_own_parsers_and_see_global_options(capsys, monkeypatch):
    """`datagen prompts` and `eval` are their scripts' parsers, mounted: their help is the
    script's, and `--runs-dir`/`-v` given before the command reach the script."""
    from evals.benchmarks import cli as eval_cli
    from graph.cli.main import main

    text = run_help(capsys, "datagen", "prompts")
    assert text.startswith("usage: interleave datagen prompts") and "--teacher-base-url URL" in text
    assert run_help(capsys, "eval").startswith("usage: interleave eval")
    seen = []
    monkeypatch.setattr(eval_cli, "run", lambda args: seen.append(args) or 0)
    assert main(["--runs-dir", "D", "-v", "eval", "wise", "--limit", "1"]) == 0
    assert (seen[0].benchmark, seen[0].runs_dir, seen[0].verbose, seen[0].limit) == ("wise", "D", True, 1)
    assert main(["--runs-dir", "D", "eval", "rise", "--runs-dir", "E"]) == 0
    assert seen[1].runs_dir == "E"  # given after the command, the script's own wins


def test_help_imports_nothing_heavy():
    """`interleave --help`, `interleave run --help` and `interleave train --help` answer without
    importing pandas, torch, TRL, LangGraph or the training code (it took 2-3 s when the export's
    options imported pandas); the training scripts' parsers are mounted only when used."""
    probe = (
        "import sys, contextlib, io\n"
        "from graph.cli.main import main\n"
        "for argv in (['--help'], ['run', '--help'], ['datagen', '--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = ('pandas', 'torch', 'langgraph', 'langchain_core', 'diffusers', 'trl', 'transformers',\n"
        "         'training.data.export', 'training.sft', 'training.grpo')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
