"""The graph as LangGraph Studio meets it: ``langgraph dev`` serving ``langgraph.json`` on a free
127.0.0.1 port, driven through the LangGraph SDK client (thread, streamed ``updates`` and
``custom`` events, state and history), with the tiny pipeline and the scripted planner/critic.
The server gets its run settings from ``INTERLEAVE_*`` variables, as the README describes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from conftest import REQUEST
from checkpoints.registry import RunRegistry
from checkpoints.saver import connect
from graph.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from graph.context import REMOTE_SETTINGS
from tools.doubles import demo_script
from tools.doubles.scripted_chat import ScriptedChatServer

REPO_ROOT = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).with_name("langgraph")
READY_TIMEOUT_S = 60.0
GRAPH_ID = "interleave"  # the key in langgraph.json


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(chat_url: str, pipeline: Path, runs_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INTERLEAVE_", "LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_"))
    }
    env.update(
        {
            "INTERLEAVE_PLANNER_BASE_URL": chat_url,
            "INTERLEAVE_CRITIC_BASE_URL": chat_url,
            "INTERLEAVE_PLANNER_MODEL": demo_script.PLANNER_MODEL,
            "INTERLEAVE_CRITIC_MODEL": demo_script.CRITIC_MODEL,
            "INTERLEAVE_GENERATOR_MODEL": str(pipeline),
            "INTERLEAVE_DEVICE": "cpu",
            "INTERLEAVE_DTYPE": "float32",
            "INTERLEAVE_WIDTH": "64",
            "INTERLEAVE_HEIGHT": "64",
            "INTERLEAVE_NUM_INFERENCE_STEPS": "2",
            "INTERLEAVE_RUNS_DIR": str(runs_dir),
            "HF_HUB_OFFLINE": "1",
            # Nothing leaves the machine: no tracing, no CLI analytics, no version check.
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGGRAPH_NO_VERSION_CHECK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory, tiny_pipeline):
    """``langgraph dev`` on a free port, with its own scripted planner/critic (as the
    ``chat_server`` fixture, module-scoped so that one server serves every test here).

    Yields (base_url, runs_dir); the server is always stopped afterwards."""
    if not LANGGRAPH.is_file():
        pytest.fail(f"{LANGGRAPH} is missing; install the studio extra: pip install -e '.[studio]'")
    tmp_path = tmp_path_factory.mktemp("studio")
    port = free_port()
    runs_dir = tmp_path / "runs"
    log_path = tmp_path / "langgraph-dev.log"
    command = [str(LANGGRAPH), "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload"]
    with ScriptedChatServer(demo_script.respond) as chat_server:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(chat_server.base_url, tiny_pipeline, runs_dir),
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(
                        f"langgraph dev exited with {process.returncode} before it was "
                        f"ready:\n{log_path.read_text(errors='replace')}"
                    )
                try:
                    with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"langgraph dev not ready on {url} after {READY_TIMEOUT_S:.0f}s:\n"
                        f"{log_path.read_text(errors='replace')}"
                    )
                time.sleep(0.25)
            yield url, runs_dir
        finally:
            stop(process)


@pytest.fixture(scope="module")
def client(studio_server):
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=studio_server[0])


@pytest.fixture(scope="module")
def new_thread(client):
    """Creates threads and deletes them afterwards, so that test threads do not pile up in the
    project's ``.langgraph_api/`` (which ``langgraph dev`` reloads, and Studio lists, on every
    start)."""
    created = []

    def create() -> str:
        thread_id = client.threads.create()["thread_id"]
        created.append(thread_id)
        return thread_id

    yield create
    for thread_id in created:
        client.threads.delete(thread_id)


def schemas_of(client) -> dict:
    assistants = client.assistants.search(graph_id=GRAPH_ID)
    assert len(assistants) == 1, assistants
    return client.assistants.get_schemas(assistants[0]["assistant_id"])


def test_studio_shows_the_run_settings_and_the_state(client):
    schemas = schemas_of(client)
    # The context form: exactly the settings a remote caller may set, each with its description
    # and its default (the server's INTERLEAVE_* where set); a choice offers its choices.
    settings = schemas["context_schema"]["properties"]
    assert set(settings) == set(REMOTE_SETTINGS)
    assert not {"planner_base_url", "planner_api_key", "generator_model", "runs_dir", "device"} & set(settings)
    assert all(field.get("description") for field in settings.values())
    assert all("default" in field for field in settings.values()), settings
    assert (settings["width"]["default"], settings["num_inference_steps"]["default"]) == (64, 2)
    assert (settings["seed"]["default"], settings["review_plan"]["default"]) == (0, False)
    assert settings["critic_unparsed"]["enum"] == ["regenerate", "accept"]
    assert settings["reference_policy"]["enum"] == ["previous", "anchor-first", "anchor-inputs"]
    assert settings["vlm_structured_output"]["default"] == "off"
    assert "enum" not in settings["seed"]
    assert {"request", "images", "document", "attempts"} <= set(schemas["state_schema"]["properties"])


def test_studio_input_form_is_the_input_schema(client):
    schemas = schemas_of(client)
    assert set(schemas["input_schema"]["properties"]) == {"request", "images", "run_id"}
    assert set(schemas["output_schema"]["properties"]) == {"run_id", "plan", "document", "document_dir"}


def test_studio_runs_the_graph_through_the_sdk(studio_server, client, new_thread):
    runs_dir = studio_server[1]
    thread_id = new_thread()
    custom, updates, errors = [], [], []
    for part in client.runs.stream(thread_id, GRAPH_ID, input={"request": REQUEST}, stream_mode=["updates", "custom"]):
        if part.event == "custom":
            custom.append(part.data)
        elif part.event == "updates":
            updates.append(part.data)
        elif part.event == "error":
            errors.append(part.data)
    assert not errors, errors

    # Progress events, as the Studio user sees them on the custom stream.
    kinds = [e["event"] for e in custom]
    assert kinds[0] == "plan_ready" and kinds[-1] == "run_finished", kinds
    counts = Counter(kinds)
    assert counts["attempt_started"] == counts["image_ready"] == 4
    assert counts["verdict"] == 4 and counts["step_accepted"] == 3
    verdicts = [e for e in custom if e["event"] == "verdict"]
    assert [(v["step_number"], v["attempt"], v["success"]) for v in verdicts] == [
        (1, 1, True),
        (2, 1, False),
        (2, 2, True),
        (3, 1, True),
    ]
    assert [e["step_number"] for e in custom if e["event"] == "step_accepted"] == [1, 2, 3]
    assert {e["run_id"] for e in custom} == {thread_id}  # the run id is the thread id

    # Node updates: at least the five nodes of the loop ran (other nodes may be added).
    nodes = [name for update in updates for name in update]
    assert {"plan", "generate", "critique", "accept", "compose"} <= set(nodes)
    assert Counter(nodes)["generate"] == 4 and Counter(nodes)["accept"] == 3

    # State as Studio shows it after the run: the document and every attempt.
    state = client.threads.get_state(thread_id)
    assert state["next"] == []
    values = state["values"]
    document = values["document"]
    assert [entry["step_number"] for entry in document] == [1, 2, 3]
    for entry in document:
        image = entry["image"]
        assert (runs_dir / image["path"]).is_file(), image
        assert (image["width"], image["height"]) == (64, 64)
    attempts = values["attempts"]
    assert [(a["step_number"], a["attempt"]) for a in attempts] == [(1, 1), (2, 1), (2, 2), (3, 1)]
    for attempt in attempts:
        assert attempt["prompt"] and isinstance(attempt["seed"], int)
        assert attempt["verdict"] is not None and attempt["verdict"]["success"] is not None
    rejected, regenerated = attempts[1], attempts[2]
    assert rejected["prompt"] == demo_script.SECOND_STEP_PROMPT
    assert rejected["verdict"]["success"] is False
    assert regenerated["prompt"] == demo_script.REFINED_SECOND_STEP_PROMPT
    assert regenerated["seed"] != rejected["seed"]
    assert Path(values["document_dir"]) == runs_dir / thread_id
    # The settings came from the server's INTERLEAVE_* environment (no context was sent).
    settings = json.loads((runs_dir / thread_id / "document.json").read_text())["settings"]
    assert settings["planner_model"] == demo_script.PLANNER_MODEL
    assert (settings["width"], settings["num_inference_steps"], settings["seed"]) == (64, 2, 0)

    # One checkpoint per super-step: Studio can step back through the whole run.
    history = client.threads.get_history(thread_id, limit=100)
    assert len(history) > 10
    assert history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]


def test_studio_context_overrides_the_server_environment(studio_server, client, new_thread):
    """Values set in Studio's context form win over INTERLEAVE_*; the rest still come from it."""
    runs_dir = studio_server[1]
    thread_id = new_thread()
    parts = list(
        client.runs.stream(
            thread_id,
            GRAPH_ID,
            input={"request": REQUEST},
            context={"seed": 7, "max_generations_per_step": 1},
            stream_mode="custom",
        )
    )
    assert not [p.data for p in parts if p.event == "error"]
    kinds = [p.data["event"] for p in parts if p.event == "custom"]
    assert kinds.count("attempt_started") == 3 and "verdict" not in kinds  # no critic calls
    assert kinds[-1] == "run_finished"
    attempts = client.threads.get_state(thread_id)["values"]["attempts"]
    assert [a["last_allowed"] for a in attempts] == [True, True, True]
    settings = json.loads((runs_dir / thread_id / "document.json").read_text())["settings"]
    assert (settings["seed"], settings["max_generations_per_step"]) == (7, 1)
    assert (settings["width"], settings["critic_model"]) == (64, demo_script.CRITIC_MODEL)


def test_plan_review_in_studio_pauses_then_resumes_with_an_edit(client, new_thread):
    """With review_plan on, the run stops after planning with the plan in the interrupt; resuming
    with an edited plan (what the Studio resume form sends) generates that plan."""
    thread_id = new_thread()
    context = {"review_plan": True, "max_generations_per_step": 1}
    first = list(
        client.runs.stream(thread_id, GRAPH_ID, input={"request": REQUEST}, context=context, stream_mode="custom")
    )
    assert [p.data["event"] for p in first if p.event == "custom"] == ["plan_ready"]
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["review"]
    pending = [i for task in state["tasks"] for i in task["interrupts"]]
    plan = pending[0]["value"]["plan"]
    assert pending[0]["value"]["kind"] == "plan_review" and len(plan) == 3

    edited = plan[:2]
    edited[1]["prompt"] = "Show the finished crane"
    rest = list(
        client.runs.stream(
            thread_id, GRAPH_ID, command={"resume": {"plan": edited}}, context=context, stream_mode="custom"
        )
    )
    kinds = [p.data["event"] for p in rest if p.event == "custom"]
    assert kinds.count("step_accepted") == 2 and kinds[-1] == "run_finished"
    values = client.threads.get_state(thread_id)["values"]
    assert [a["prompt"] for a in values["attempts"]][1] == "Show the finished crane"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("resume_context", [None, {"seed": 9}], ids=["stored", "caller-override"])
def test_a_resume_without_context_goes_on_with_the_stored_settings(studio_server, client, new_thread, resume_context):
    """The settings a run started with are stored with it: resuming the thread (Studio's resume
    form, or the SDK without context) goes on with them, not with the server's defaults; what
    the caller sends on the resume wins for those fields only."""
    runs_dir = studio_server[1]
    thread_id = new_thread()
    context = {"review_plan": True, "max_generations_per_step": 1, "seed": 5}
    first = list(
        client.runs.stream(thread_id, GRAPH_ID, input={"request": REQUEST}, context=context, stream_mode="custom")
    )
    assert [p.data["event"] for p in first if p.event == "custom"] == ["plan_ready"]
    rest = list(
        client.runs.stream(
            thread_id,
            GRAPH_ID,
            command={"resume": {"approve": True}},
            stream_mode="custom",
            **({"context": resume_context} if resume_context else {}),
        )
    )
    assert not [p.data for p in rest if p.event == "error"]
    kinds = [p.data["event"] for p in rest if p.event == "custom"]
    # max_generations_per_step=1 as stored: every image accepted as is, the critic never asked.
    assert kinds.count("attempt_started") == 3 and "verdict" not in kinds and kinds[-1] == "run_finished"
    settings = json.loads((runs_dir / thread_id / "document.json").read_text())["settings"]
    expected_seed = (resume_context or {}).get("seed", 5)
    assert (settings["seed"], settings["max_generations_per_step"], settings["review_plan"]) == (
        expected_seed,
        1,
        True,
    )
    assert (settings["width"], settings["planner_model"]) == (64, demo_script.PLANNER_MODEL)
    # The registry row holds what the run went on with, for the next resume too.
    with closing(connect(runs_dir, create=False)) as conn:
        row = RunRegistry(conn).get(thread_id)
    assert (row["status"], row["settings"]["seed"], row["origin"]) == ("finished", expected_seed, "server")


def test_runs_made_through_the_server_are_in_the_cli_registry(studio_server, client, new_thread, capsys):
    """One registry: a run through the server is listed and shown by the CLI, from the same runs
    folder; `interleave resume` refuses it (its checkpoints are the server's) and changes nothing."""
    runs_dir = str(studio_server[1])
    thread_id = new_thread()
    parts = list(
        client.runs.stream(
            thread_id,
            GRAPH_ID,
            input={"request": REQUEST},
            context={"max_generations_per_step": 1},
            stream_mode="custom",
        )
    )
    assert [p.data["event"] for p in parts if p.event == "custom"][-1] == "run_finished"

    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "list")
    assert code == EXIT_OK
    line = next(line for line in out.splitlines() if line.startswith(thread_id))
    assert "finished" in line and "3/3 steps" in line and "3 images" in line and "(LangGraph server)" in line
    assert REQUEST[:40] in line

    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "show", thread_id)
    assert code == EXIT_OK
    assert out.startswith(f"run {thread_id}: finished · 3/3 steps · 3 generations")
    assert f"request: {REQUEST}" in out and "LangGraph server" in out
    assert f"document: {Path(runs_dir) / thread_id / 'document.html'}" in out
    # Its plan and attempts, as its document holds them (the checkpoints are the server's).
    assert f"  2. Halfway there: {demo_script.SECOND_STEP_PROMPT}" in out
    assert out.count("accepted without critic") == 3
    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "export", thread_id, "--format", "md")
    assert code == EXIT_OK and Path(out.strip()).read_text().count("![") == 3

    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "show", thread_id, "--json")
    row = json.loads(out)["run"]
    assert row["settings"]["max_generations_per_step"] == 1 and "planner_api_key" not in row["settings"]
    assert row["images"] == [] and row["origin"] == "server"

    before = (Path(runs_dir) / thread_id / "document.json").read_bytes()
    code, _, err = cli(capsys, "--runs-dir", runs_dir, "resume", thread_id)
    assert code == EXIT_BAD_INPUT
    assert "made through the LangGraph server" in err and "continue it there" in err
    code, _, err = cli(capsys, "--runs-dir", runs_dir, "fork", thread_id, "--at", "2", "--run-id", "server-fork")
    assert code == EXIT_BAD_INPUT and "made through the LangGraph server" in err
    assert (Path(runs_dir) / thread_id / "document.json").read_bytes() == before
    assert not (Path(runs_dir) / "server-fork").exists()
    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "show", thread_id)
    assert "finished" in out.splitlines()[0]


def test_a_caller_cannot_point_the_server_elsewhere(studio_server, client, new_thread):
    """A caller who names its own planner/critic URL is refused at the server's edge (422 naming
    the fields, graph/server.py), the caller's URL hears nothing, and nothing runs on the thread;
    the same thread then runs with the remote settings alone, on the server's own models."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    from langgraph_sdk.errors import UnprocessableEntityError

    heard = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            heard.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    attacker = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        thread_id = new_thread()
        url = f"http://127.0.0.1:{attacker.server_port}/v1"
        with pytest.raises(UnprocessableEntityError) as refused:
            list(
                client.runs.stream(
                    thread_id,
                    GRAPH_ID,
                    input={"request": REQUEST},
                    context={"planner_base_url": url, "critic_base_url": url, "max_generations_per_step": 1},
                    stream_mode="custom",
                )
            )
        assert "planner_base_url" in str(refused.value) and url not in str(refused.value)
        assert client.runs.list(thread_id) == []
        parts = list(
            client.runs.stream(
                thread_id,
                GRAPH_ID,
                input={"request": REQUEST},
                context={"max_generations_per_step": 1},
                stream_mode="custom",
            )
        )
    finally:
        attacker.shutdown()
    assert [p.data["event"] for p in parts if p.event == "custom"][-1] == "run_finished"
    assert heard == []
    settings = json.loads((studio_server[1] / thread_id / "document.json").read_text())["settings"]
    assert settings["planner_base_url"] != url and settings["max_generations_per_step"] == 1


def registry_row(runs_dir: str, run_id: str) -> dict | None:
    with closing(connect(runs_dir)) as conn:
        registry = RunRegistry(conn)
        return registry.get(run_id) if registry.exists(run_id) else None


def test_a_run_cancelled_through_the_server_is_not_left_running(studio_server, client, new_thread, capsys):
    """Studio's cancel (``client.runs.cancel``) stops the run at the server while a node works
    on an executor thread, which the cancel cannot stop: the run's row in the CLI registry then
    says interrupted, and why, instead of running for as long as the server lives."""
    runs_dir = str(studio_server[1])
    thread_id = new_thread()
    # 512², 50 steps: about 1.4 s an image on the tiny pipeline, so the run is still at work
    run = client.runs.create(
        thread_id,
        GRAPH_ID,
        input={"request": REQUEST},
        context={"width": 512, "height": 512, "num_inference_steps": 50},
    )
    deadline = time.monotonic() + 30
    while (row := registry_row(runs_dir, thread_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row is not None and row["status"] == "running", row
    time.sleep(0.3)  # into the plan or the first generation
    client.runs.cancel(thread_id, run["run_id"], wait=True)
    row = registry_row(runs_dir, thread_id)
    assert row["status"] == "interrupted", row
    assert row["error"] == "cancelled through the LangGraph server; continue it there"
    assert client.runs.get(thread_id, run["run_id"])["status"] != "success"
    time.sleep(2)  # the node's thread ends its image; its last write leaves the status alone
    assert registry_row(runs_dir, thread_id)["status"] == "interrupted"
    code, out, _ = cli(capsys, "--runs-dir", runs_dir, "show", thread_id)
    assert code == EXIT_OK and out.startswith(f"run {thread_id}: interrupted")
