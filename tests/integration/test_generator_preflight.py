"""Preflight of a remote generator: a run asked to use an images server that is down, or that
refuses the key, stops before anything is written, with advice for that cause; a server that
answers lets the run start. Real HTTP on 127.0.0.1 (our images app under uvicorn, and a plain
``http.server`` that refuses every key)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REQUEST
from graph.runs.preflight import EndpointUnreachableError
from graph.runs.runner import start_run
from tools.generator import diffusion
from tools.generator.serve_app import BackgroundServer, images_app, local_generate
from tools.generator.worker import pool_for

CLOSED = "http://127.0.0.1:9/v1"  # nothing listens there


def _written(runs_dir: str) -> list[Path]:
    folder = Path(runs_dir)
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_a_generator_server_that_is_down_stops_the_run_before_anything_is_written(make_context, runs_dir):
    with pytest.raises(EndpointUnreachableError) as caught:
        start_run(REQUEST, make_context(generator_base_url=CLOSED), preflight=True)
    message = str(caught.value)
    assert f"the generator endpoint {CLOSED}" in message
    assert "nothing listens at 127.0.0.1:9" in message
    assert "interleave serve generator --model" in message and "--port 9" in message
    assert message.endswith("Nothing was written.")
    assert _written(runs_dir) == []


class _RefusesEveryKey(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 -- http.server's name
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "bad key"}}')

    def log_message(self, *args):
        pass


def test_a_generator_server_that_refuses_the_key_names_the_key_setting(make_context, runs_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesEveryKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        with pytest.raises(EndpointUnreachableError) as caught:
            start_run(REQUEST, make_context(generator_base_url=url, generator_api_key="wrong"), preflight=True)
    finally:
        server.shutdown()
    message = str(caught.value)
    assert "refused the API key (HTTP 401)" in message and "INTERLEAVE_GENERATOR_API_KEY" in message
    assert "wrong" not in message  # the key itself is never echoed
    assert _written(runs_dir) == []


def test_a_generator_server_that_answers_passes_preflight_and_the_run_finishes(make_context, runs_dir, tiny_pipeline):
    pool = pool_for([diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")])
    with BackgroundServer(images_app(local_generate(pool), model=str(tiny_pipeline), spec=pool.spec)) as images:
        outcome = start_run(REQUEST, make_context(generator_base_url=images.base_url), preflight=True)
    assert outcome.status == "finished", outcome.error


def test_a_generator_server_that_wants_a_key_when_none_was_given_says_so(make_context, runs_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesEveryKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        with pytest.raises(EndpointUnreachableError) as caught:
            start_run(REQUEST, make_context(generator_base_url=url, generator_api_key=""), preflight=True)
    finally:
        server.shutdown()
    message = str(caught.value)
    assert "refused the API key" not in message  # none was sent
    assert "asks for an API key (HTTP 401) and none was given" in message and "INTERLEAVE_GENERATOR_API_KEY" in message
    assert _written(runs_dir) == []
