"""Configurations: how a benchmark's items are produced, side by side in one report.

``graph`` runs the planner -> generator -> critic loop with run-setting overrides; ``bare`` runs
the generator alone on the benchmark prompt (a one-step plan, no planner, no critic).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from graph.context import Context

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Config:
    """How items are produced: ``graph`` (planner -> generator -> critic) or ``bare`` (the
    generator alone, one image from the benchmark prompt), with run-setting overrides."""

    name: str
    kind: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)


PRESETS = {
    "full": Config("full", "graph", {"max_generations_per_step": 3}),
    "critic-off": Config("critic-off", "graph", {"max_generations_per_step": 1}),
    "bare": Config("bare", "bare", {}),
}


def parse_config(spec: str) -> Config:
    """A preset name (full, critic-off, bare) or ``NAME:key=value,...`` over the graph.

    Keys are run settings (``max_generations_per_step=1``, ``planner_model=...``); ``kind=bare``
    makes it a bare-generator configuration.

    >>> parse_config("attempts-1:max_generations_per_step=1")
    Config(name='attempts-1', kind='graph', overrides={'max_generations_per_step': 1})
    """
    if ":" not in spec:
        if spec not in PRESETS:
            raise ValueError(
                f"unknown configuration {spec!r}: use one of {', '.join(PRESETS)} or "
                f"NAME:setting=value,... (e.g. attempts-1:max_generations_per_step=1)"
            )
        return PRESETS[spec]
    name, _, body = spec.partition(":")
    if not _SAFE_NAME.match(name):
        raise ValueError(f"configuration name {name!r} may hold only letters, digits, '.', '_' and '-'")
    types = {f.name: f.type for f in dataclasses.fields(Context)}
    kind, overrides = "graph", {}
    for pair in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"configuration {name!r}: {pair!r} is not key=value")
        if key == "kind":
            if value not in ("graph", "bare"):
                raise ValueError(f"configuration {name!r}: kind={value!r} must be graph or bare")
            kind = value
            continue
        if key not in types or key in ("runs_dir", "review_plan"):
            raise ValueError(
                f"configuration {name!r}: {key!r} is not a run setting that a "
                f"configuration may change (see `interleave run --help`)"
            )
        caster = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}
        try:
            overrides[key] = caster.get(str(types[key]), str)(value)
        except ValueError:
            raise ValueError(f"configuration {name!r}: {key}={value!r} is not a valid {types[key]}") from None
    Context(**overrides)  # the same checks as a run's settings
    return Config(name, kind, overrides)
