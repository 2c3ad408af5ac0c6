"""What a benchmark module provides (``ueval.py``, ``wise.py``, ``rise.py`` each build one
``Benchmark``) and the small path helpers the outputs and the report share."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evals.benchmarks.data import Item
from tools.judge.judge import Question
from tools.store.images import ImageStore


@dataclass(frozen=True)
class Benchmark:
    """The parts that differ per benchmark (see ueval.py, wise.py, rise.py)."""

    name: str
    prompt_version: str
    judge_system: str
    load: Callable[[Path, Path | None], list[Item]]  # (data path, images root) -> items
    request: Callable[[Item], tuple[str, list[str]]]  # graph request text and input image paths
    bare_request: Callable[[Item], tuple[str, str | None]]  # generator prompt, source image path
    pick: Callable[[Item, dict], dict]  # (item, document) -> {text, images, inputs}
    questions: Callable[[Item, dict, ImageStore], list[Question]]  # (item, output, store)
    score: Callable[[Item, dict, list[dict]], dict]  # (item, output, answers) -> result
    # (scored items, items the judge could not score) -> metrics; the second list lets a
    # benchmark count unscorable items the way its official script does
    summarize: Callable[[list[tuple[Item, dict]], list[tuple[Item, dict]]], dict]
    headline: tuple[str, ...]  # metric keys shown side by side in the report
    export: Callable[[Path, str, list[tuple[Item, dict]], Path], Path | None] | None = None
    # What the report states about the protocol: its name, the official files and commit it
    # follows, where the judge prompt came from, the scoring rule, how the headline is defined.
    protocol: dict[str, str] = field(default_factory=dict, hash=False)


def image_path(runs_dir: str | Path, ref: dict) -> str:
    return str((Path(runs_dir) / ref["path"]).resolve())


def relative_link(target: str | None, base: Path) -> str | None:
    return os.path.relpath(target, base) if target else None
