"""Reading runs back: status and state for ``show``, documents for ``export``."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

from checkpoints.registry import RunRegistry
from checkpoints.run_ids import inside_runs_dir, run_folder
from checkpoints.saver import connect, open_checkpointer
from graph.builder import build_graph
from tools.store import documents


def run_details(runs_dir: str, run_id: str) -> dict[str, Any]:
    with closing(connect(runs_dir, create=False)) as conn:
        row = RunRegistry(conn).get(run_id)
    with open_checkpointer(runs_dir) as saver:
        snapshot = build_graph(saver).get_state({"configurable": {"thread_id": run_id}})
    return {"run": row, "state": snapshot.values or served_state(runs_dir, row), "next": list(snapshot.next)}


def served_state(runs_dir: str, row: dict[str, Any]) -> dict[str, Any]:
    """What can be shown here of a run made through the LangGraph server, whose checkpoints are
    the server's: once finished, its plan and attempts as its document.json holds them."""
    path = run_folder(runs_dir, row["run_id"]) / "document.json"
    if row.get("origin") != "server" or not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    steps = [s for s in record.get("steps", []) if not s.get("given")]
    keys = ("step_number", "step_name", "instruction", "prompt", "auxiliary_text")
    return {
        "plan": [{k: s.get(k) for k in keys} for s in steps],
        "attempts": [a for s in steps for a in s.get("attempts", [])],
        "document_dir": str(path.parent),
    }


def export_document(runs_dir: str, run_id: str, fmt: str, output: str | None) -> Path:
    """Re-render a finished run's document (from its document.json) and return the file's path.

    The document is read from the run's own folder, not from the folder path stored in the state
    (the runs folder may have moved, or the path been altered), and every image path in it must
    be a store path inside the runs folder: a stored ``../`` or absolute path is refused, so an
    export never reads or writes outside the runs folder except at the ``output`` you name.
    """
    details = run_details(runs_dir, run_id)
    folder = run_folder(runs_dir, run_id)
    if not details["state"].get("document_dir") or not (folder / "document.json").exists():
        finish = (
            f"finish it through the LangGraph server that made it (Studio, or the SDK on thread {run_id})"
            if details["run"].get("origin") == "server"  # `interleave resume` refuses it
            else f"finish it first with `interleave resume {run_id}`"
        )
        raise ValueError(f"run {run_id} has no document yet (status {details['run']['status']}); {finish}")
    record = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    check_image_paths(runs_dir, record)
    if output is not None and Path(output).is_dir():
        raise ValueError(
            f"--output {output} is a folder; name the file to write, e.g. {Path(output) / ('document.' + fmt)}"
        )
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise ValueError(
            f"--output {output}: the folder {Path(output).resolve().parent} does not exist; create it first"
        )
    path = documents.write_one(folder, record, Path(runs_dir), fmt)
    if output is None:
        return path
    target = Path(output)
    if fmt == "md":  # image links must stay valid from the new location
        text = documents.render_markdown(record, os.path.relpath(Path(runs_dir).resolve(), target.resolve().parent))
        target.write_text(text, encoding="utf-8")
    else:
        shutil.copyfile(path, target)
    return target


def check_image_paths(runs_dir: str, record: dict[str, Any]) -> None:
    """Refuse a document whose image references point outside the image store."""
    refs = [s.get("image") for s in record.get("steps", [])]
    refs += [
        ref
        for s in record.get("steps", [])
        for a in s.get("attempts", [])
        for ref in (a.get("image"), a.get("source"), *(a.get("references") or []))
    ]
    refs += list(record.get("input_images") or [])
    for ref in refs:
        if ref is None:
            continue
        path = ref.get("path") if isinstance(ref, dict) else None
        if not _in_store(runs_dir, path):
            raise ValueError(
                f"the document of run {record.get('run_id')!r} names the image "
                f"{path!r}, which is not in the image store; the document.json was "
                f"altered. Re-create it with `interleave resume`, or restore it"
            )


def _in_store(runs_dir: str, path: Any) -> bool:
    if not isinstance(path, str) or not path.startswith("images/"):
        return False
    try:
        inside_runs_dir(Path(runs_dir) / "images", path[len("images/") :])
    except ValueError:  # outside the store, or not a path at all (a NUL byte)
        return False
    return True
