"""Many requests through the graph at once, resumable: ``interleave batch`` and ``datagen run``.

Each request becomes one ordinary run in the registry, with a run id derived from the batch name
and the request's id, so a batch is resumable by simply running it again:
- a finished run is skipped;
- a failed or interrupted run (or one whose process died) is resumed from its last checkpoint;
- a run that was never created is started.
Up to ``concurrency`` runs go at once, on threads of this process: they share one generator
pipeline and its batching worker (``tools.generator.worker``) and one client per VLM endpoint, so
the GPU is shared instead of loaded twice. With ``generator_base_url`` set, every run sends its
generations to that images server instead (``tools.generator.images_api``: a Ray Serve fleet,
SGLang Diffusion, vLLM-Omni), so one batch drives all the GPUs behind it. Every attempt is
recorded by the graph as usual (prompt actually used, seed, images, verdict, reasoning) in the
run's checkpoints and documents.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from checkpoints.registry import RunNotFoundError, RunRegistry
from checkpoints.saver import connect
from graph.context import RESUME_OVERRIDES, Context
from graph.runs.runner import RunOutcome, resume_run, start_run
from tools.llm.chat import ChatModels

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BatchReport:
    """What happened to each request of a batch: run ids by outcome, errors by request id."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished before this call
    failed: dict[str, str] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # paused for plan review

    @property
    def total(self) -> int:
        return len(self.finished) + len(self.skipped) + len(self.failed) + len(self.waiting)


def batch_run_id(batch: str, item_id: str) -> str:
    """A stable, file-system-safe run id for one request of a batch.

    >>> batch_run_id("teacher-v1", "how-to/cooking 0007")
    'teacher-v1-how-to_cooking_0007'
    """
    return f"{_UNSAFE.sub('_', batch)}-{_UNSAFE.sub('_', str(item_id))}".strip("_")


def _status(runs_dir: str, run_id: str) -> str | None:
    try:
        with closing(connect(runs_dir)) as conn:
            return RunRegistry(conn).get(run_id)["status"]
    except RunNotFoundError:
        return None


def run_one(
    item: dict[str, Any], batch: str, context: Context, models: ChatModels | None = None
) -> tuple[str, RunOutcome | None]:
    """Start, resume or skip one request; returns (run id, outcome or None when skipped). An item
    with a ``plan`` (and ``plan_reasoning``) starts at the generator with it (``start_run``)."""
    run_id = batch_run_id(batch, item["id"])
    status = _status(context.runs_dir, run_id)
    if status == "finished":
        return run_id, None
    if status is None:
        return run_id, start_run(
            item["request"],
            context,
            images=item.get("images") or [],
            run_id=run_id,
            models=models,
            plan=item.get("plan"),
            plan_reasoning=item.get("plan_reasoning", ""),
        )
    # A run resumes with its own stored settings; only where the models are may have moved.
    moved = {name: getattr(context, name) for name in RESUME_OVERRIDES}
    return run_id, resume_run(run_id, context.runs_dir, models=models, overrides=moved)


def run_batch(
    items: list[dict[str, Any]],
    context: Context,
    *,
    batch: str,
    concurrency: int = 4,
    models: ChatModels | None = None,
    on_progress: Callable[[int, int, str, str], None] | None = None,
) -> BatchReport:
    """Run every item ({id, request, images?}) to its end, ``concurrency`` at a time.

    ``on_progress(done, total, run_id, outcome)`` is called as each item ends (from worker
    threads, one call at a time). One failing request never stops the others.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be at least 1")
    ids = [str(item["id"]) for item in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"request ids must be unique within a batch; repeated: {duplicates[:5]}")
    report = BatchReport()
    lock = threading.Lock()

    def one(item: dict[str, Any]) -> None:
        try:
            run_id, outcome = run_one(item, batch, context, models)
        except Exception as exc:  # noqa: BLE001 -- bad input of one request: report, go on
            run_id, outcome, error = batch_run_id(batch, item["id"]), None, f"{type(exc).__name__}: {exc}"
        else:
            error = None
        with lock:
            if error is not None:
                report.failed[run_id] = error
                label = "failed"
            elif outcome is None:
                report.skipped.append(run_id)
                label = "skipped (finished before)"
            elif outcome.status == "finished":
                report.finished.append(run_id)
                label = "finished"
            elif outcome.status == "awaiting_review":
                report.waiting.append(run_id)
                label = "waiting for plan review"
            else:
                report.failed[run_id] = f"{type(outcome.error).__name__}: {outcome.error}"
                label = "failed"
            if on_progress is not None:
                on_progress(report.total, len(items), run_id, label)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch") as pool:
        list(pool.map(one, items))
    return report
