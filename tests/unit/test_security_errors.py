"""Clear errors instead of tracebacks for a runs folder that is a file."""

from __future__ import annotations

from graph.cli.main import EXIT_BAD_INPUT, main


def test_a_runs_folder_that_is_a_file_is_a_clear_error(capsys, tmp_path):
    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("I am a file")
    assert main(["--runs-dir", str(not_a_folder), "list"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert not_a_folder.read_text() == "I am a file"
