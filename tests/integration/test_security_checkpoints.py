"""A tampered runs database must not execute code: a checkpoint row crafted to call os.system,
subprocess.check_call or eval is refused by `interleave show`, `history` and `resume` with an
error naming the run and the type, and the payload never runs. A row rewritten with plain data of
the wrong shape (a plan that is a string) is refused the same way, naming the field, and the
database is left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.serde import jsonplus

from checkpoints.saver import database_path
from checkpoints.serde import CompressedSerializer
from conftest import REQUEST
from graph.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from graph.runs.runner import start_run


def payloads(marker: Path) -> dict[str, ormsgpack.Ext]:
    """msgpack extensions that LangGraph's default serializer turns into a call on load."""
    shell = f"touch {marker}"
    pos = jsonplus.EXT_CONSTRUCTOR_POS_ARGS
    return {
        "os.system": ormsgpack.Ext(pos, ormsgpack.packb(("os", "system", (shell,)))),
        "subprocess.check_call": ormsgpack.Ext(
            pos, ormsgpack.packb(("subprocess", "check_call", (["touch", str(marker)],)))
        ),
        "builtins.eval": ormsgpack.Ext(
            pos, ormsgpack.packb(("builtins", "eval", (f"open({str(marker)!r}, 'w').close()",)))
        ),
    }


@pytest.fixture
def paused_run(make_context):
    """A run paused for plan review: a plan checkpoint and an interrupt write, no images."""
    outcome = start_run(REQUEST, make_context(review_plan=True), run_id="victim")
    assert outcome.status == "awaiting_review", outcome.error
    return outcome.run_id


def tamper_state(runs_dir: str, run_id: str, value: Any, field: str = "request") -> None:
    """Replace ``field`` in the run's newest checkpoint by ``value``, as an attacker with write
    access to the database would."""
    serde = CompressedSerializer()
    with sqlite3.connect(database_path(runs_dir)) as conn:
        checkpoint_id, kind, blob = conn.execute(
            "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_id = ? "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        checkpoint = serde.loads_typed((kind, blob))
        checkpoint["channel_values"][field] = value
        conn.execute(
            "UPDATE checkpoints SET type = 'msgpack', checkpoint = ? WHERE thread_id = ? AND checkpoint_id = ?",
            (ormsgpack.packb(checkpoint), run_id, checkpoint_id),
        )


def tamper_interrupt(runs_dir: str, run_id: str, value: ormsgpack.Ext) -> None:
    """Replace the pending plan-review interrupt by ``value``, nested inside an allowed type."""
    with sqlite3.connect(database_path(runs_dir)) as conn:
        rows = conn.execute("SELECT rowid, channel FROM writes WHERE thread_id = ?", (run_id,)).fetchall()
        rowid = next(r for r, channel in rows if channel == "__interrupt__")
        inner = ormsgpack.Ext(
            jsonplus.EXT_CONSTRUCTOR_KW_ARGS,
            ormsgpack.packb(("langgraph.types", "Interrupt", {"value": value, "id": "x"})),
        )
        conn.execute("UPDATE writes SET type = 'msgpack', value = ? WHERE rowid = ?", (ormsgpack.packb([inner]), rowid))


@pytest.mark.parametrize("where", ["state", "interrupt"])
@pytest.mark.parametrize("payload", ["os.system", "subprocess.check_call", "builtins.eval"])
@pytest.mark.parametrize("command", [["show"], ["history"], ["resume", "--approve-plan"]])
def test_a_crafted_checkpoint_is_refused_and_never_executed(
    capsys, runs_dir, paused_run, tmp_path, payload, where, command
):
    marker = tmp_path / "pwned"
    (tamper_state if where == "state" else tamper_interrupt)(runs_dir, paused_run, payloads(marker)[payload])
    code = main(["--runs-dir", runs_dir, command[0], paused_run, *command[1:]])
    _, err = capsys.readouterr()
    assert not marker.exists(), f"{payload} ran on `interleave {command[0]}`"
    assert code == EXIT_BAD_INPUT
    assert f"run {paused_run}" in err and payload in err and "tampered" in err


def test_an_untampered_run_still_shows_and_resumes(capsys, runs_dir, paused_run):
    assert main(["--runs-dir", runs_dir, "show", paused_run]) == EXIT_OK
    assert main(["--runs-dir", runs_dir, "history", paused_run]) == EXIT_OK
    capsys.readouterr()


def test_legacy_json_and_pickle_blobs_are_refused():
    serde = CompressedSerializer()
    for kind in ("json", "pickle"):
        with pytest.raises(ValueError, match=f"holds the type a '{kind}' blob"):
            serde.loads_typed((kind, b"{}"))
    assert serde.pickle_fallback is False


def database_rows(runs_dir: str) -> list[tuple]:
    with sqlite3.connect(database_path(runs_dir)) as conn:
        return [
            *conn.execute("SELECT * FROM checkpoints ORDER BY thread_id, checkpoint_id"),
            *conn.execute("SELECT * FROM writes ORDER BY thread_id, checkpoint_id, task_id, idx"),
        ]


WRONG_SHAPES = {  # field -> (plain value an attacker wrote, where the error must point)
    "plan": ("three steps", "'plan' (Input should be a valid list, found str"),
    "step_index": ("2", "'step_index' (Input should be a valid integer, found str"),
    "structured_output": (["json"], "'structured_output' (Input should be a valid dictionary"),
    "request": ({"text": "crane"}, "'request' (Input should be a valid string, found dict"),
}


@pytest.mark.parametrize("field", sorted(WRONG_SHAPES))
@pytest.mark.parametrize("command", [["show"], ["history"], ["resume", "--approve-plan"]])
def test_a_checkpoint_of_the_wrong_shape_is_refused_and_left_as_it_was(capsys, runs_dir, paused_run, field, command):
    value, expected = WRONG_SHAPES[field]
    tamper_state(runs_dir, paused_run, value, field)
    before = database_rows(runs_dir)
    code = main(["--runs-dir", runs_dir, command[0], paused_run, *command[1:]])
    _, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, err
    assert f"run {paused_run}" in err and expected in err and "tampered" in err
    assert "Traceback" not in err
    assert database_rows(runs_dir) == before


def test_a_finished_run_with_a_malformed_attempt_names_the_path_to_it(capsys, runs_dir, make_context):
    outcome = start_run(REQUEST, make_context(), run_id="finished")
    assert outcome.status == "finished", outcome.error
    with sqlite3.connect(database_path(runs_dir)) as conn:
        kind, blob = conn.execute(
            "SELECT type, checkpoint FROM checkpoints WHERE thread_id = 'finished' ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
    attempts = CompressedSerializer().loads_typed((kind, blob))["channel_values"]["attempts"]
    attempts[1]["image"]["width"] = "1024"
    tamper_state(runs_dir, "finished", attempts, "attempts")
    assert main(["--runs-dir", runs_dir, "show", "finished"]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert "'attempts' (at attempts[1].image.width: Input should be a valid integer, found str" in err


def test_a_pending_write_of_the_wrong_shape_is_refused(capsys, runs_dir, paused_run):
    """A write LangGraph would apply on resume (here to ``attempts``, through its reducer) is
    checked as the reducer takes it: one attempt or a list of them."""
    with sqlite3.connect(database_path(runs_dir)) as conn:
        row = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM writes "
            "WHERE thread_id = ? AND channel = '__interrupt__'",
            (paused_run,),
        ).fetchone()
        conn.execute(
            "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value) "
            "VALUES (?, ?, ?, ?, ?, 'attempts', 'msgpack', ?)",
            (*row[:4], row[4] + 1, ormsgpack.packb([{"step_number": 1, "attempt": "first"}])),
        )
    before = database_rows(runs_dir)
    assert main(["--runs-dir", runs_dir, "resume", paused_run, "--approve-plan"]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert "'attempts' (at attempts[0].attempt: Input should be a valid integer, found str" in err
    assert database_rows(runs_dir) == before


def test_keys_from_the_database_are_shown_escaped(capsys, runs_dir, paused_run):
    tamper_state(runs_dir, paused_run, {"http://evil\x1b[2J": 3}, "structured_output")
    assert main(["--runs-dir", runs_dir, "show", paused_run]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert "\x1b" not in err and "\\x1b[2J" in err
