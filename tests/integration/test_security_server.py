"""The LangGraph server (``langgraph dev`` on ``langgraph.json``) refuses, at its HTTP edge, a
request that sets in ``context`` or ``config.configurable`` what a remote caller may not (an API
key, a base URL): 422 naming the field, never the value, and none of it stored in the server's
thread, run or assistant records, nor in its files. Allowed settings still run."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from conftest import REQUEST
from test_studio import GRAPH_ID, LANGGRAPH, READY_TIMEOUT_S, REPO_ROOT, free_port, server_env, stop
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer

KEY = "sk-caller-key-never-stored-31337"
OPERATOR_SECRET = "pw-operator-never-logged"


def start_server(cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    port, log_path = free_port(), cwd / "langgraph-dev.log"
    command = [str(LANGGRAPH), "dev", "--config", str(REPO_ROOT / "langgraph.json")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"langgraph dev did not start:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                if response.status == 200:
                    return process, url, log_path
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)


def test_a_key_in_the_context_is_refused_at_the_edge_and_stored_nowhere(tmp_path, tiny_pipeline):
    from langgraph_sdk import get_sync_client

    with ScriptedChatServer(demo_script.respond) as chat:
        # the operator's endpoint holds a password: the server's logs show it redacted
        env = server_env(
            chat.base_url.replace("http://", f"http://op:{OPERATOR_SECRET}@"), tiny_pipeline, tmp_path / "runs"
        )
        process, url, log_path = start_server(tmp_path, env)
        try:
            client = get_sync_client(url=url)
            thread_id = client.threads.create()["thread_id"]
            attempts = [
                lambda: client.runs.create(
                    thread_id, GRAPH_ID, input={"request": REQUEST}, context={"planner_api_key": KEY}
                ),
                lambda: client.runs.wait(
                    thread_id, GRAPH_ID, input={"request": REQUEST}, config={"configurable": {"critic_api_key": KEY}}
                ),
                lambda: client.runs.wait(
                    None, GRAPH_ID, input={"request": REQUEST}, context={"planner_base_url": f"http://me:{KEY}@evil/v1"}
                ),
                lambda: client.assistants.create(GRAPH_ID, context={"generator_api_key": KEY}),
            ]
            for attempt, field in zip(
                attempts, ["planner_api_key", "critic_api_key", "planner_base_url", "generator_api_key"]
            ):
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    attempt()
                response = refused.value.response
                assert response.status_code == 422 and f"may not set {field}" in response.text
                assert KEY not in response.text
            # a batch of runs is checked item by item
            batch = httpx.post(
                f"{url}/runs/batch",
                json=[
                    {"assistant_id": GRAPH_ID, "input": {"request": REQUEST}, "context": {"seed": 1, "runs_dir": KEY}}
                ],
            )
            assert batch.status_code == 422 and "context.runs_dir" in batch.text and KEY not in batch.text

            # nothing of the refused requests is in the server's records
            assert client.runs.list(thread_id) == []
            records = [
                client.threads.get(thread_id),
                client.threads.search(limit=100),
                client.assistants.search(limit=100),
            ]
            assert KEY not in str(records)
            # allowed settings still pass the guard: a run paused for plan review
            run = client.runs.wait(
                thread_id, GRAPH_ID, input={"request": REQUEST}, context={"review_plan": True, "seed": 3}
            )
            assert [s["step_number"] for s in run["plan"]] == [1, 2, 3]
            assert client.threads.get(thread_id)["status"] == "interrupted"
        finally:
            stop(process)
    log = log_path.read_text(errors="replace")
    assert "HTTP Request: POST http://***@127.0.0.1" in log and OPERATOR_SECRET not in log
    stored = [p for p in (tmp_path / ".langgraph_api").rglob("*") if p.is_file()]
    assert stored  # the server saved its records on shutdown
    for path in [*stored, log_path, *(tmp_path / "runs").rglob("*")]:
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
