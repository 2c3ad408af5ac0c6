"""One driver per run: while a live process holds a run's lease, a second `interleave resume`
is refused with the PID that drives it; once that process is gone the lease is stale and the
run resumes."""

from __future__ import annotations

import subprocess
from contextlib import closing

from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
from conftest import REQUEST
from graph.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from graph.runs.runner import start_run


def test_a_second_driver_is_refused_until_the_first_is_gone(capsys, make_context, runs_dir):
    assert start_run(REQUEST, make_context(review_plan=True), run_id="leased").status == "awaiting_review"
    other = subprocess.Popen(["sleep", "120"])  # stands in for another `interleave resume`
    try:
        with closing(connect(runs_dir)) as conn:
            RunRegistry(conn).update("leased", status="running", pid=other.pid)
        code = main(["--runs-dir", runs_dir, "resume", "leased", "--approve-plan"])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT and f"run leased is being driven by PID {other.pid}" in err
        with closing(connect(runs_dir)) as conn:  # the holder's lease is untouched
            assert RunRegistry(conn).get("leased")["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    assert main(["--runs-dir", runs_dir, "resume", "leased", "--approve-plan"]) == EXIT_OK
    capsys.readouterr()


def test_a_lease_from_another_host_is_honoured_until_it_goes_stale(runs_dir):
    with closing(connect(runs_dir)) as conn:
        registry = RunRegistry(conn)
        registry.create("remote-run", REQUEST, [], {})
        registry.update("remote-run", pid=4242, host="other-machine")
        try:
            registry.claim("remote-run")
            raise AssertionError("claimed a fresh lease of another host")
        except ValueError as exc:
            assert "PID 4242 on other-machine" in str(exc)
        conn.execute("UPDATE runs SET updated_at = '2000-01-01T00:00:00+0000' WHERE run_id = 'remote-run'")
        conn.commit()
        registry.claim("remote-run")  # stale: taken over
        assert registry.get("remote-run")["host"] != "other-machine"
