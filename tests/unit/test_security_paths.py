"""Run ids, stored image paths and the planner's failure files can never lead a write (or an
export's read) outside the runs folder, whatever text they hold (property-based)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoints.run_ids import InvalidRunIdError, check_run_id, printable, run_folder
from graph.runs.inspection import check_image_paths
from nodes.planner import _save_failures

# Text an attacker or a careless user might write: path pieces, separators, controls, anything.
PIECES = st.sampled_from(
    [
        "..",
        ".",
        "/",
        "\\",
        "~",
        "images",
        "_demo",
        "interleave.sqlite",
        "\x1b[2J",
        "\x00",
        "\n",
        "a",
        "runs",
        "C:",
        "%2e%2e",
        " ",
        "-",
    ]
)
NASTY = st.one_of(st.text(max_size=40), st.lists(PIECES, max_size=8).map("".join))


def _inside(root: Path, path: Path) -> bool:
    root, path = root.resolve(), path.resolve()
    return path == root or root in path.parents


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "/tmp/x",
        ".",
        "..",
        "images",
        "_demo",
        "IMAGES",
        "interleave.sqlite",
        "a\x1b[2Jb",
        "a/b",
        "",
        "x" * 200,
        "a\nb",
        "-rf",
        ".hidden",
    ],
)
def test_invalid_run_ids_are_refused_with_the_rule(bad):
    with pytest.raises(InvalidRunIdError, match="run id"):
        check_run_id(bad)


@pytest.mark.parametrize(
    "good", ["crane-2", "20261123-205056-9748bd", "datagen-how_to_0007", "b0c1f7e2-5d1c-4c1e-9a55-9b3c2a8d7e11"]
)
def test_valid_run_ids_pass(good):
    assert check_run_id(good) == good


def test_a_number_is_not_a_run_id():
    with pytest.raises(InvalidRunIdError, match="text, not int"):
        check_run_id(12345)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_id=NASTY)
def test_no_run_id_leads_outside_the_runs_folder(tmp_path, run_id):
    runs = tmp_path / "runs"
    try:
        folder = run_folder(runs, run_id)
    except ValueError:
        return
    assert _inside(runs, folder) and folder.resolve() != runs.resolve()
    assert folder.name not in ("images", "_demo") and not folder.name.endswith(".sqlite")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_id=NASTY)
def test_the_planner_failure_file_stays_in_the_runs_folder(tmp_path, run_id):
    runs = tmp_path / "runs"
    before = set(tmp_path.rglob("*"))
    try:
        saved = _save_failures(str(runs), run_id, [{"reply": "x"}])
    except ValueError:
        assert {p for p in set(tmp_path.rglob("*")) - before if not _inside(runs, p)} == set()
        return
    assert _inside(runs, saved)
    assert all(_inside(runs, p) for p in set(tmp_path.rglob("*")) - before)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.one_of(NASTY, NASTY.map(lambda p: "images/" + p)))
def test_no_stored_image_path_is_read_outside_the_image_store(tmp_path, path):
    runs = tmp_path / "runs"
    record = {"run_id": "r", "steps": [{"image": {"path": path, "sha256": "0"}, "attempts": []}]}
    try:
        check_image_paths(str(runs), record)
    except ValueError:
        return
    assert _inside(runs / "images", runs / path) and "\x00" not in path


def test_a_symlinked_run_folder_pointing_outside_is_refused(tmp_path):
    runs, outside = tmp_path / "runs", tmp_path / "elsewhere"
    runs.mkdir()
    outside.mkdir()
    os.symlink(outside, runs / "linked")
    with pytest.raises(ValueError, match="outside the runs folder"):
        run_folder(runs, "linked")


def test_terminal_output_shows_control_characters_instead_of_running_them():
    assert printable("run\x1b[2J\x07x") == "run\\x1b[2J\\x07x"
    assert printable("tab\tok") == "tab\tok"
