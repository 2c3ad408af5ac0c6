"""The graph a LangGraph server exports (``graph.builder:graph``) takes from a remote caller only
the settings marked remote: never an endpoint (which would receive the server's API key), a key,
a model or file path, or the runs folder; and input images only as data URLs."""

from __future__ import annotations

import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from graph.builder import graph as served_graph
from graph.context import REMOTE_SETTINGS, Context, RemoteContext


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        _Recorder.seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def attacker_url():
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


@pytest.mark.parametrize(
    "field",
    [
        "planner_base_url",
        "critic_base_url",
        "planner_api_key",
        "runs_dir",
        "generator_model",
        "generator_lora",
        "device",
        "planner_backend",
    ],
)
def test_a_remote_caller_cannot_set_server_side_settings(monkeypatch, tmp_path, attacker_url, field):
    monkeypatch.setenv("INTERLEAVE_PLANNER_API_KEY", "sk-server-secret")
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", str(tmp_path / "runs"))
    value = attacker_url if field.endswith("url") else str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=f"may not set {field}") as refused:
        served_graph.invoke({"request": "How do I fold a paper crane?"}, context={field: value})
    assert _Recorder.seen == []  # the server's key never went to the caller's URL
    assert "sk-server-secret" not in str(refused.value) and value not in str(refused.value)
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "runs").exists()


def test_remote_image_inputs_must_be_data_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERLEAVE_RUNS_DIR", str(tmp_path / "runs"))
    secret = tmp_path / "server-photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(secret)
    with pytest.raises(ValueError, match="must be data URLs"):
        served_graph.invoke({"request": "What is in <image>?", "images": [str(secret)]}, context={"seed": 3})
    assert not (tmp_path / "runs" / "images").exists()  # the server's file was not imported


def test_the_allow_list_is_field_metadata_and_holds_no_endpoint_key_or_path():
    remote = {f.name for f in dataclasses.fields(Context) if f.metadata["remote"]}
    assert remote == set(REMOTE_SETTINGS)
    assert not {n for n in remote if n.endswith(("_url", "_key", "_dir", "_model", "_lora", "device"))}
    assert RemoteContext(seed=7, review_plan=True).seed == 7
