"""Judge every attempt of every finished teacher trajectory: ``interleave datagen score``.

Each attempt is scored against the step's plan prompt (what the step was meant to show), with
its own source image as the before-image (a white canvas, i.e. "from scratch", for a first step),
by ``tools.judge.judge.Judge``. Results go to an ``attempt_scores`` table in the runs database, one row
per (run, step, attempt, judge model, judge prompt version), which the export reads. Re-running
skips attempts already scored (a failed judgment is asked again), and the judge's own cache
makes repeated questions free, so the command can be stopped and started at will.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
from checkpoints.sqlite import retry_locked

TABLE = "attempt_scores"
COLUMNS = {
    "run_id": str,
    "step_number": int,
    "attempt": int,
    "judge_model": str,
    "prompt_version": str,
    "sc": float,
    "pq": float,
    "overall": float,
    "error": str,
    "reason": str,
}
KEY = ("run_id", "step_number", "attempt", "judge_model", "prompt_version")


@dataclass
class ScoreReport:
    runs: int = 0
    attempts: int = 0
    already_scored: int = 0
    scored: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # failures by reason
    skipped_runs: dict[str, str] = field(default_factory=dict)  # run id -> why


def scores_table(conn: Any) -> sqlite_utils.db.Table:
    db = sqlite_utils.Database(conn)
    table = db[TABLE]

    def ensure() -> None:
        if not table.exists():
            table.create(COLUMNS, pk=KEY, if_not_exists=True)

    retry_locked(ensure)
    return table


def finished_documents(runs_dir: str, batch: str | None) -> tuple[list[dict], dict[str, str]]:
    """The document records of finished runs (of one batch, if named), and why others were left."""
    with closing(connect(runs_dir, create=False)) as conn:
        rows = RunRegistry(conn).list(limit=10**9)
    documents, skipped = [], {}
    for row in rows:
        if batch and not row["run_id"].startswith(f"{batch}-"):
            continue
        if row["status"] != "finished":
            skipped[row["run_id"]] = f"not finished ({row['status']})"
            continue
        path = Path(row["document_dir"] or "") / "document.json"
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            skipped[row["run_id"]] = f"document unreadable: {exc}"
    documents.sort(key=lambda d: d["run_id"])
    return documents, skipped


def judged_items(document: dict) -> list[tuple[dict, dict, Any]]:
    """(step, attempt, (before, after, instruction)) for every generated attempt of a run."""
    items = []
    for step in document["steps"]:
        for attempt in step["attempts"]:
            items.append((step, attempt, (attempt["source"], attempt["image"], step["prompt"])))
    return items


def score_runs(
    runs_dir: str, judge: Any, *, batch: str | None = None, on_progress: Callable[[int, int], None] | None = None
) -> ScoreReport:
    """Judge every unscored attempt of the finished runs and store the scores."""
    documents, skipped = finished_documents(runs_dir, batch)
    report = ScoreReport(runs=len(documents), skipped_runs=skipped)
    with closing(connect(runs_dir)) as conn:
        table = scores_table(conn)
        done = {
            tuple(r[k] for k in KEY[:3])
            for r in table.rows_where(
                "judge_model = ? AND prompt_version = ? AND error IS NULL",
                [judge.model_name, judge.prompt_version],
                select="run_id, step_number, attempt",
            )
        }
        todo = []
        for document in documents:
            for step, attempt, item in judged_items(document):
                report.attempts += 1
                if (document["run_id"], step["step_number"], attempt["attempt"]) in done:
                    report.already_scored += 1
                else:
                    todo.append((document["run_id"], step["step_number"], attempt["attempt"], item))
        judgments = judge.judge_many([t[3] for t in todo], on_done=on_progress)
        rows = []
        for (run_id, step_number, attempt, _), judgment in zip(todo, judgments):
            rows.append(
                {
                    "run_id": run_id,
                    "step_number": step_number,
                    "attempt": attempt,
                    "judge_model": judge.model_name,
                    "prompt_version": judge.prompt_version,
                    "sc": judgment.sc,
                    "pq": judgment.pq,
                    "overall": judgment.overall,
                    "error": judgment.error,
                    "reason": judgment.reason,
                }
            )
            if judgment.error is None:
                report.scored += 1
            else:
                report.failed[judgment.reason or "unknown"] = report.failed.get(judgment.reason or "unknown", 0) + 1
        retry_locked(lambda: table.upsert_all(rows, pk=KEY))
    return report


def load_scores(runs_dir: str, judge_model: str, prompt_version: str) -> dict[tuple, dict]:
    """Stored scores by (run_id, step_number, attempt) for one judge; failed judgments excluded."""
    with closing(connect(runs_dir, create=False)) as conn:
        table = scores_table(conn)
        return {
            (r["run_id"], r["step_number"], r["attempt"]): r
            for r in table.rows_where(
                "judge_model = ? AND prompt_version = ? AND error IS NULL", [judge_model, prompt_version]
            )
        }
