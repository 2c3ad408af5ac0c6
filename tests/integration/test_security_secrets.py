"""API keys, and passwords inside base URLs, never reach the run's checkpoints, registry,
documents or logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from conftest import REQUEST
from graph.runs.runner import start_run

KEY = "sk-never-store-me-4242"


def test_keys_and_url_passwords_are_stored_nowhere(make_context, runs_dir, chat_server, caplog):
    user_url = chat_server.base_url.replace("http://", "http://alice:pw-never-store-me@")
    caplog.set_level(logging.DEBUG)
    context = make_context(planner_api_key=KEY, critic_api_key=KEY, critic_base_url=user_url)
    outcome = start_run(REQUEST, context, run_id="keyed")
    assert outcome.status == "finished", outcome.error
    files = [p for p in Path(runs_dir).rglob("*") if p.is_file() and "_demo" not in p.parts]
    assert any(p.name == "interleave.sqlite" for p in files) and any(p.suffix == ".html" for p in files)
    for path in files:  # database (and its WAL), documents, planner failure files
        data = path.read_bytes()
        assert KEY.encode() not in data and b"pw-never-store-me" not in data, path
    ours = [
        r.getMessage()
        for r in caplog.records
        if r.name.split(".")[0] in ("graph", "nodes", "tools", "checkpoints", "training")
    ]
    assert ours and not [m for m in ours if KEY in m or "pw-never-store-me" in m]
    assert not [r for r in caplog.records if KEY in r.getMessage()]  # no library logs the key


def test_a_verbose_cli_run_never_logs_a_password_of_a_base_url(chat_server, tiny_pipeline, runs_dir):
    # httpx logs every request's full URL at INFO: -v shows those lines, without the password
    secret = "pw-never-log-me"
    url = chat_server.base_url.replace("http://", f"http://alice:{secret}@")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("interleave")), "-v", "--runs-dir", runs_dir, "run", REQUEST]
        + ["--planner-base-url", url, "--critic-base-url", url, "--planner-model", "demo-planner"]
        + ["--critic-model", "demo-critic", "--generator-model", str(tiny_pipeline), "--device", "cpu"]
        + ["--width", "64", "--height", "64", "--num-inference-steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "HTTP Request: POST http://***@127.0.0.1" in done.stderr  # the lines are there, redacted
    assert secret not in done.stderr + done.stdout
    for path in Path(runs_dir).rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_a_run_failing_on_an_endpoint_with_a_password_stores_its_error_without_it(make_context, runs_dir):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://alice:pw-never-store-me@127.0.0.1:{port}/v1"
    outcome = start_run(REQUEST, make_context(planner_base_url=url, vlm_retries=0), run_id="refused")
    assert outcome.status == "failed" and "refused the connection" in str(outcome.error)
    for path in Path(runs_dir).rglob("*"):  # the registry's error column included
        assert not path.is_file() or b"pw-never-store-me" not in path.read_bytes(), path
