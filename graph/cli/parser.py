"""How the command line presents its options: run settings grouped by concern with their
defaults and choices, and the global options (``--runs-dir``, ``-v``) accepted before or after
the command.

The settings come from the ``Context`` dataclass (type, choices, description), so the CLI, the
environment variables and the Studio form cannot drift apart. This module imports nothing heavy:
``interleave --help`` must answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
from typing import Any

from graph.context import ENV_PREFIX, SECRET_FIELDS, Context

_TYPES = {"str": str, "int": int, "float": float}

# Help groups, in the order ``--help`` shows them: (title, description, names, prefixes). A field
# goes to the group that names it, else to the first whose prefix starts it; a field may also
# name its group in its metadata ("group").
GROUPS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("planner and critic", "the two VLMs: where they run and how they are asked", (), ("planner_", "critic_", "vlm_")),
    (
        "generator",
        "the diffusers image model and the images it makes",
        ("device", "dtype", "width", "height", "num_inference_steps", "guidance_scale", "reference_policy"),
        ("generator_",),
    ),
    (
        "loop",
        "how steps are generated, judged and regenerated",
        ("max_plan_steps", "max_generations_per_step", "critic_unparsed", "review_plan", "seed"),
        (),
    ),
)
OTHER_GROUP = ("other settings", "")
GLOBAL_TITLE = "output and logging (before or after the command)"


def group_of(name: str) -> str:
    """The help group of a run setting.

    >>> group_of("critic_model"), group_of("dtype"), group_of("seed")
    ('planner and critic', 'generator', 'loop')
    """
    for item in dataclasses.fields(Context):
        if item.name == name and item.metadata.get("group"):
            return item.metadata["group"]
    for title, _, names, _ in GROUPS:
        if name in names:
            return title
    for title, _, _, prefixes in GROUPS:
        if prefixes and name.startswith(prefixes):
            return title
    return OTHER_GROUP[0]


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "none"
    return str(value)


def default_text(item: dataclasses.Field, stored: bool = False) -> str:
    """What a setting is when its flag is not given, as ``--help`` says it.

    For ``resume``/``fork`` it is the run's stored value. A value from the environment is shown
    with its variable; a secret's value is never shown.
    """
    env = ENV_PREFIX + item.name.upper()
    if stored:
        return "default: as stored with the run"
    if item.name in SECRET_FIELDS:
        return f"default: ${env} or EMPTY"
    try:
        value = item.default_factory()  # reads the environment, as Context() would
    except ValueError:
        return f"default: ${env} is set but invalid"
    origin = f", from ${env}" if os.environ.get(env) else ""
    return f"default: {_shown(value)}{origin}"


def add_settings(parser: argparse.ArgumentParser, names: list[str] | tuple[str, ...], *, stored: bool = False) -> None:
    """One flag per run setting named, under its concern's group, with default and choices.

    ``stored``: the flags override a run's stored settings (``resume``, ``fork``), so the default
    is the stored value rather than ``Context``'s.
    """
    wanted = set(names)
    fields = [f for f in dataclasses.fields(Context) if f.name in wanted]
    titles = [g[0] for g in GROUPS] + [OTHER_GROUP[0]]
    descriptions = {g[0]: g[1] for g in GROUPS}
    by_group: dict[str, list[dataclasses.Field]] = {}
    for item in fields:
        by_group.setdefault(group_of(item.name), []).append(item)
    note = " (flag wins over INTERLEAVE_<NAME>)" if not stored else ""
    for title in titles + sorted(set(by_group) - set(titles)):
        if title not in by_group:
            continue
        group = parser.add_argument_group(title, (descriptions.get(title, "") + note).strip() or None)
        for item in by_group[title]:
            _add_one(group, item, stored)


def _add_one(group: Any, item: dataclasses.Field, stored: bool) -> None:
    flag = "--" + item.name.replace("_", "-")
    text = item.metadata["description"].replace("%", "%%")
    help_text = f"{text} ({default_text(item, stored)})"
    kind = str(item.type)
    if kind == "bool":
        group.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif item.metadata.get("choices"):
        group.add_argument(flag, dest=item.name, choices=item.metadata["choices"], default=None, help=help_text)
    else:
        group.add_argument(
            flag, dest=item.name, type=_TYPES[kind], default=None, metavar=_metavar(item.name, kind), help=help_text
        )


def _metavar(name: str, kind: str) -> str:
    if name.endswith("_url"):
        return "URL"
    return {"int": "N", "float": "X"}.get(kind, "TEXT")


class CompactUsage(argparse.HelpFormatter):
    """Usage lines that list the positional and required arguments and ``[options]``: with 40
    settings, listing every optional flag in the usage buries what must be given."""

    def _format_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any) -> str:
        kept = [a for a in actions if not a.option_strings or a.required]
        optional = len(kept) < len(actions)
        text = super()._format_usage(usage, kept, groups, prefix)
        if optional and usage is None:
            head, _, tail = text.partition(self._prog)
            text = f"{head}{self._prog} [options]{tail}"
        return text


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--runs-dir`` and ``-v``. On a command's parser they default to SUPPRESS, so a value
    given before the command is kept unless the same option is given again after it."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group(GLOBAL_TITLE)
    group.add_argument(
        "--runs-dir",
        **({"default": None} if top else default),
        help="folder holding the run database, images and documents (default: $INTERLEAVE_RUNS_DIR or ./runs)",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", **({"default": False} if top else default), help="log library messages"
    )


def accept_global_options_anywhere(parser: argparse.ArgumentParser) -> None:
    """Give every command (and sub-command) its own ``--runs-dir``/``-v``, so
    ``interleave run "x" --runs-dir D`` works as ``interleave --runs-dir D run "x"`` does."""
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                if not sub.add_help:  # a delegated command parses its own line
                    continue
                if not any("--runs-dir" in a.option_strings for a in sub._actions):
                    add_global_options(sub, top=False)
                sub.formatter_class = CompactUsage
                accept_global_options_anywhere(sub)


class LazyParser(argparse.ArgumentParser):
    """A sub-command parser whose options come only when the command is used (parsed, or its
    help shown), so that a heavy module's options do not slow down every other command's start
    or ``interleave --help``. Either way, one mechanism:

    - ``populate(parser)`` adds them in place (``datagen export``: thresholds read off
      ``training.data.export``, which imports pandas);
    - ``script`` names a script whose own ``make_parser(subparsers)`` (TRL's pattern for its
      scripts) builds the parser, mounted here (``train sft|grpo``: TRL, transformers;
      ``datagen prompts``; ``eval``). ``parser_class`` (``"module:Class"``) is the class that
      ``make_parser`` expects ``subparsers`` to build. The parse reads a recipe too when the
      parser can (TRL's ``parse_args_and_config``: ``--config YAML``) and leaves ``mount`` and
      ``script_args`` in the namespace; ``mount.run(script_args)`` calls the script's ``run``.
      ``hint`` ends the message of a ``ValueError`` over the script's settings.

    Without either it is a plain parser (the class of every sub-command parser of the CLI).
    """

    def __init__(
        self,
        *args: Any,
        populate: Any = None,
        script: str = "",
        parser_class: str = "argparse:ArgumentParser",
        hint: str = "",
        **kwargs: Any,
    ) -> None:
        if script:
            kwargs["add_help"] = False  # the mounted parser answers --help
        super().__init__(*args, **kwargs)
        self._populate, self._script, self._parser_class, self._hint = populate, script, parser_class, hint
        self._mounted: argparse.ArgumentParser | None = None

    def _ready(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def mounted(self) -> argparse.ArgumentParser:
        """The script's own parser (built on first use)."""
        if self._mounted is None:
            module, _, name = self._parser_class.partition(":")
            host = argparse.ArgumentParser(prog=self.prog.rpartition(" ")[0], add_help=False)
            subparsers = host.add_subparsers(parser_class=getattr(importlib.import_module(module), name))
            self._mounted = importlib.import_module(self._script).make_parser(subparsers)
        return self._mounted

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self._script:
            self._ready()
            return super().parse_known_args(args, namespace)
        parser = self.mounted()
        read = getattr(parser, "parse_args_and_config", parser.parse_args)
        namespace = argparse.Namespace() if namespace is None else namespace
        try:
            namespace.script_args = read(args)
        except ValueError as exc:  # TRL checks its configs as it builds them
            raise ValueError(f"{exc}{self._hint}") from None
        namespace.mount = self
        return namespace, []

    def format_help(self) -> str:
        if self._script:
            return self.mounted().format_help()
        self._ready()
        return super().format_help()

    def run(self, script_args: Any) -> int:
        """Run the mounted script with what its parser gave; its exit code."""
        try:
            return importlib.import_module(self._script).run(script_args)
        except ValueError as exc:
            raise ValueError(f"{exc}{self._hint}") from None


def as_cli(message: str) -> str:
    """A library message in the command line's words: run settings named by their setting
    names (``vlm_timeout_s``, which hold in Python and Studio too) become the flags
    (``--vlm-timeout-s``). Only names with an underscore are touched, so plain words such as
    "seed" or "device" in a sentence stay as they are.

    >>> as_cli("Allow more time (vlm_timeout_s) or set critic_base_url.")
    'Allow more time (--vlm-timeout-s) or set --critic-base-url.'
    """
    names = sorted((f.name for f in dataclasses.fields(Context) if "_" in f.name), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
