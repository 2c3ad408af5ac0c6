"""Reading runs back: status and state for ``show``, documents for ``export``."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect, open_checkpointer
from graph.builder import build_graph
from tools.store import documents


def run_details(runs_dir: str, run_id: str) -> dict[str, Any]:
    with closing(connect(runs_dir, create=False)) as conn:
        row = RunRegistry(conn).get(run_id)
    with open_checkpointer(runs_dir) as saver:
        snapshot = build_graph(saver).get_state({"configurable": {"thread_id": run_id}})
    return {"run": row, "state": snapshot.values, "next": list(snapshot.next)}


def export_document(runs_dir: str, run_id: str, fmt: str, output: str | None) -> Path:
    """Re-render a finished run's document (from its document.json) and return the file's path."""
    details = run_details(runs_dir, run_id)
    folder = details["state"].get("document_dir")
    if not folder or not (Path(folder) / "document.json").exists():
        raise ValueError(f"run {run_id} has no document yet (status {details['run']['status']}); "
                         f"finish it first with `interleave resume {run_id}`")
    folder = Path(folder)
    record = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    path = documents.write_one(folder, record, Path(runs_dir), fmt)
    if output is None:
        return path
    target = Path(output)
    if fmt == "md":  # image links must stay valid from the new location
        text = documents.render_markdown(record, os.path.relpath(Path(runs_dir).resolve(),
                                                                 target.resolve().parent))
        target.write_text(text, encoding="utf-8")
    else:
        shutil.copyfile(path, target)
    return target
