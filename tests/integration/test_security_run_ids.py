"""Run ids that try to escape the runs folder, or to take over its own files, are refused at
every entry (CLI --run-id, fork --run-id, graph input as Studio sends it) before anything is
written; export trusts no stored path; list and show print control characters harmlessly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from checkpoints.saver import database_path
from conftest import REQUEST
from graph.builder import build_graph
from graph.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from graph.runs.runner import start_run

BAD_IDS = ["../escaped", "/tmp/absolute-run", ".", "images", "_demo", "interleave.sqlite", "red\x1b[2Jalert"]


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_cli_run_refuses_a_bad_run_id_before_writing(capsys, tmp_path, tiny_pipeline, run_id):
    runs = tmp_path / "runs"
    code = main(
        [
            "--runs-dir",
            str(runs),
            "run",
            REQUEST,
            "--run-id",
            run_id,
            "--no-preflight",
            "--generator-model",
            str(tiny_pipeline),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "run id" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"] or not runs.exists()
    assert files_under(runs) == set() and not Path("/tmp/absolute-run").exists()


def test_graph_input_with_an_escaping_run_id_writes_nothing_outside(make_context, tmp_path, runs_dir):
    """What a Studio/SDK caller sends: {"request", "run_id"} as graph input."""
    graph = build_graph()
    with pytest.raises(ValueError, match="run id '../../outside' is not allowed"):
        graph.invoke({"request": REQUEST, "run_id": "../../outside"}, context=make_context())
    assert not (tmp_path / "outside").exists() and not (Path(runs_dir).parent.parent / "outside").exists()


def test_fork_export_list_and_show_with_hostile_ids_and_paths(capsys, make_context, runs_dir, tmp_path):
    outcome = start_run(REQUEST, make_context(), run_id="parent")
    assert outcome.status == "finished", outcome.error
    before = files_under(tmp_path)
    code = main(["--runs-dir", runs_dir, "fork", "parent", "--at", "2", "--run-id", "../forked"])
    assert code == EXIT_BAD_INPUT and "run id '../forked' is not allowed" in capsys.readouterr().err
    assert files_under(tmp_path) == before

    # export reads the run's own folder, not a stored absolute path, and refuses altered image paths
    with sqlite3.connect(database_path(runs_dir)) as conn:
        conn.execute("UPDATE runs SET request = ? WHERE run_id = 'parent'", ("crane\x1b[2J\x07",))
    document = Path(runs_dir) / "parent" / "document.json"
    record = json.loads(document.read_text())
    record["steps"][0]["image"]["path"] = "images/../../../secret.txt"
    (tmp_path / "secret.txt").write_text("do not embed")
    document.write_text(json.dumps(record))
    code = main(["--runs-dir", runs_dir, "export", "parent", "--format", "html"])
    assert code == EXIT_BAD_INPUT and "not in the image store" in capsys.readouterr().err
    assert "do not embed" not in (Path(runs_dir) / "parent" / "document.html").read_text()

    assert main(["--runs-dir", runs_dir, "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out
    assert main(["--runs-dir", runs_dir, "show", "parent"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "crane\\x1b[2J" in out
