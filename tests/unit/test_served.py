"""The settings a node of a run made through a LangGraph server uses (``graph.served``), and the
context schema the server publishes: no key and no credentials in it, whatever the environment."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from graph.context import Context, RemoteContext
from graph.served import run_context


def test_a_served_run_goes_on_with_its_stored_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", str(tmp_path / "runs"))
    stored = Context(seed=5, max_generations_per_step=1, generator_lora="/srv/lora", width=512).to_record()
    ctx = run_context(stored, RemoteContext())  # a resume without context
    assert (ctx.seed, ctx.max_generations_per_step, ctx.generator_lora, ctx.width) == (5, 1, "/srv/lora", 512)
    assert ctx.runs_dir == str(tmp_path / "runs")  # the server's runs folder, not a stored one


def test_the_caller_overrides_only_what_it_sends_and_the_operator_says_where_models_are(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("INTERLEAVE_PLANNER_BASE_URL", "http://10.0.0.7:8001/v1")  # the model server moved
    monkeypatch.setenv("INTERLEAVE_GUIDANCE_SCALE", "3.5")  # not where a model is: stored value kept
    stored = Context(seed=5, max_generations_per_step=1, guidance_scale=1.0).to_record()
    ctx = run_context(stored, RemoteContext(seed=9))
    assert (ctx.seed, ctx.max_generations_per_step, ctx.guidance_scale) == (9, 1, 1.0)
    assert ctx.planner_base_url == "http://10.0.0.7:8001/v1"


def test_a_first_run_takes_the_server_settings_and_what_the_caller_sent(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_WIDTH", "256")
    caller = RemoteContext(seed=3)
    ctx = run_context(None, caller)
    assert (ctx.seed, ctx.width) == (3, 256) and caller.caller_settings() == {"seed": 3}


def test_no_schema_shows_a_key_or_the_credentials_of_a_url(monkeypatch):
    monkeypatch.setenv("INTERLEAVE_PLANNER_API_KEY", "sk-server-secret")
    monkeypatch.setenv("INTERLEAVE_CRITIC_BASE_URL", "https://me:hunter2@api.example.com/v1")
    for schema in (TypeAdapter(Context).json_schema(), TypeAdapter(RemoteContext).json_schema()):
        text = json.dumps(schema)
        assert "sk-server-secret" not in text and "hunter2" not in text
    full = TypeAdapter(Context).json_schema()["properties"]
    assert "default" not in full["planner_api_key"]
    assert full["critic_base_url"]["default"] == "https://api.example.com/v1"
    assert full["dtype"]["default"] == "auto" and full["generator_offload"]["enum"] == ["none", "model", "sequential"]


def test_a_setting_both_the_operator_and_the_caller_give_on_a_resume_is_the_callers(monkeypatch, tmp_path):
    # vlm_retries is at once a resume override (the operator's word) and a remote setting
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("INTERLEAVE_VLM_RETRIES", "4")
    stored = Context(vlm_retries=1).to_record()
    assert run_context(stored, RemoteContext()).vlm_retries == 4
    assert run_context(stored, RemoteContext(vlm_retries=6)).vlm_retries == 6


def test_a_remote_caller_cannot_take_over_a_run_made_with_the_cli(monkeypatch, tmp_path):
    # a remote caller picks the run id (InputState.run_id): naming a CLI run's must not make the
    # server run on that run's stored settings and row (nor overwrite its document later)
    from contextlib import closing
    from types import SimpleNamespace

    import pytest

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect
    from graph.served import served

    runs = str(tmp_path / "runs")
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", runs)
    with closing(connect(runs)) as conn:
        RunRegistry(conn).create("victim", "a CLI request", [], Context(seed=5).to_record())
        RunRegistry(conn).update("victim", status="finished")
    ran = []
    node = served(lambda state, runtime: ran.append(runtime) or {}, "plan")
    runtime = SimpleNamespace(context=RemoteContext(), override=lambda **kw: SimpleNamespace(**kw))
    with pytest.raises(ValueError, match="victim"):
        node({"request": "hi", "run_id": "victim"}, runtime)
    assert not ran
    with closing(connect(runs)) as conn:
        row = RunRegistry(conn).get("victim")
    assert (row["status"], row.get("origin")) == ("finished", None)


def test_exporting_an_unfinished_server_run_says_where_to_finish_it(tmp_path):
    # `interleave resume` refuses a server run, so the export error must not send the user there
    from contextlib import closing

    import pytest

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect
    from graph.runs.inspection import export_document

    runs = str(tmp_path / "runs")
    with closing(connect(runs)) as conn:
        RunRegistry(conn).create("served1", "a request", [], Context(runs_dir=runs).to_record())
        RunRegistry(conn).update("served1", origin="server", status="awaiting_review")
    with pytest.raises(ValueError, match="no document yet") as error:
        export_document(runs, "served1", "html", None)
    assert "interleave resume" not in str(error.value) and "LangGraph server" in str(error.value)


def test_a_served_runs_row_is_created_with_its_origin(monkeypatch, tmp_path):
    # one insert: a crash right after it must not leave a row that reads as a CLI run's
    from contextlib import closing

    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect

    runs = str(tmp_path / "runs")
    with closing(connect(runs)) as conn:
        registry = RunRegistry(conn)
        updates = []
        monkeypatch.setattr(registry, "update", lambda *a, **kw: updates.append(kw))
        registry.create("t1", "a request", [], Context(runs_dir=runs).to_record(), origin="server")
        assert registry.get("t1")["origin"] == "server" and not updates
