"""Run ids, stored image paths and the planner's failure files can never lead a write (or an
export's read) outside the runs folder, nor a benchmark data file's image paths a read outside
its folder, whatever text they hold (property-based)."""

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


def _rise_data(folder: Path, image: str, **extra) -> Path:
    """A one-sample RISEBench data file in ``folder`` naming ``image``."""
    import json

    path = folder / "data.json"
    sample = {"index": "t7", "category": "temporal_reasoning", "instruction": "melt it", "reference": "a puddle"}
    path.write_text(json.dumps([{**sample, "image": image, **extra}]))
    return path


def test_benchmark_data_cannot_name_images_outside_its_folder(tmp_path):
    from PIL import Image

    from evals.benchmarks import rise
    from evals.benchmarks.data import DataFormatError

    data, outside = tmp_path / "data", tmp_path / "secret.png"
    (data / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(outside)
    Image.new("RGB", (8, 8)).save(data / "imgs" / "1.png")
    os.symlink(outside, data / "imgs" / "link.png")
    for image in ("../secret.png", str(outside), "imgs/link.png", "imgs/../../secret.png"):
        with pytest.raises(DataFormatError) as refused:
            rise.load(_rise_data(data, image))
        message = str(refused.value)
        assert "(id t7)" in message and repr(image) in message and "outside" in message
        assert "--images-root" in message  # what to do
    with pytest.raises(DataFormatError, match=r"\(id t7\): reference_img '../secret.png' resolves to"):
        rise.load(_rise_data(data, "imgs/1.png", reference_img="../secret.png"))
    (item,) = rise.load(_rise_data(data, "imgs/./1.png"))
    assert item.record["image"] == str((data / "imgs" / "1.png").resolve())
    # an explicit --images-root is the folder they must stay in
    (item,) = rise.load(_rise_data(data, "secret.png"), images_root=tmp_path)
    assert item.record["image"] == str(outside.resolve())


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=NASTY)
def test_no_benchmark_image_path_is_read_outside_the_data_folder(tmp_path, image):
    from evals.benchmarks import rise
    from evals.benchmarks.data import DataFormatError

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (tmp_path / "a").write_bytes(b"outside")  # a file a "../a" would find
    try:
        (item,) = rise.load(_rise_data(data, image))
    except DataFormatError:
        return
    assert _inside(data, Path(item.record["image"]))
