"""A tampered runs database must not execute code: a checkpoint row crafted to call os.system,
subprocess.check_call or eval is refused by `interleave show`, `history` and `resume` with an
error naming the run and the type, and the payload never runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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


def tamper_state(runs_dir: str, run_id: str, value: ormsgpack.Ext) -> None:
    """Replace the request in the run's newest checkpoint by ``value``, as an attacker with write
    access to the database would."""
    serde = CompressedSerializer()
    with sqlite3.connect(database_path(runs_dir)) as conn:
        checkpoint_id, kind, blob = conn.execute(
            "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_id = ? "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        checkpoint = serde.loads_typed((kind, blob))
        checkpoint["channel_values"]["request"] = value
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
