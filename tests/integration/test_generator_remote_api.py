"""The images-API generator backend over real HTTP on 127.0.0.1, without Ray.

Our FastAPI images app (``tools.generator.serve_app``) under uvicorn in this process, over the
tiny klein pipeline: a whole graph run through it equals the in-process run pixel for pixel.
A plain ``http.server`` that answers garbage (two images, non-image bytes, another size, a
refusal, an outage) shows what the client does with each: a clear error naming the endpoint,
retries only where a retry can help, and nothing stored.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REQUEST, without_timings
from graph.runs.demo import demo_context
from graph.runs.runner import start_run
from tools.generator import diffusion
from tools.generator.images_api import ImagesAPIError, ImagesAPIGenerator
from tools.generator.models import FAMILIES
from tools.generator.serve_app import BackgroundServer, images_app, local_generate
from tools.generator.worker import pool_for

KW = dict(width=64, height=64, steps=2, guidance=1.0)


def _png(size=(64, 64), seed=0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class GarbageServer:
    """A plain HTTP server on 127.0.0.1 that answers every request with ``answers`` in turn
    (the last one repeats) and records what it was sent."""

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        self.answers = list(answers)
        self.received: list[tuple[str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 -- http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((self.path, dict(self.headers), body))
                status, payload = outer.answers[min(len(outer.received), len(outer.answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "GarbageServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def content(document: dict) -> dict:
    """A document without its timings and the settings that say where it ran (runs folder, endpoint)."""
    return without_timings({k: v for k, v in document.items() if k != "settings"})


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _client(server, tiny_pipeline, **kw) -> ImagesAPIGenerator:
    return ImagesAPIGenerator(server.base_url, str(tiny_pipeline), backoff_s=0.01, **kw)


def _form_fields(headers: dict, body: bytes) -> tuple[dict, list[bytes]]:
    """(text fields, image file bytes) of a multipart body, parsed by the standard library."""
    message = BytesParser(policy=email_policy).parsebytes(
        b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + body
    )
    fields, files = {}, []
    for part in message.iter_parts():
        if part.get_filename():
            files.append(part.get_payload(decode=True))
        else:
            fields[part.get_param("name", header="content-disposition")] = part.get_content()
    return fields, files


@pytest.fixture(scope="module")
def images_server(tiny_pipeline):
    """Our images app over the tiny klein pipeline, served by uvicorn on 127.0.0.1 (no Ray)."""
    pool = pool_for([diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")])
    with BackgroundServer(images_app(local_generate(pool), model=str(tiny_pipeline), spec=pool.spec)) as server:
        yield server


def test_a_run_through_the_images_api_equals_the_in_process_run(chat_server, tiny_pipeline, images_server, tmp_path):
    local = start_run(REQUEST, demo_context(str(tmp_path / "local"), chat_server.base_url, tiny_pipeline))
    remote = start_run(
        REQUEST,
        demo_context(
            str(tmp_path / "remote"), chat_server.base_url, tiny_pipeline, generator_base_url=images_server.base_url
        ),
    )
    assert local.status == remote.status == "finished", (local.error, remote.error)
    documents = [json.loads((Path(o.document_dir) / "document.json").read_text()) for o in (local, remote)]
    assert content(documents[0]) == content(documents[1])
    # Same sha256 refs means the same pixels; check the files too (3 steps, one regenerated).
    for a, b in zip(documents[0]["steps"], documents[1]["steps"]):
        pixels = [np.asarray(Image.open(tmp_path / name / a["image"]["path"])) for name in ("local", "remote")]
        assert a["image"]["sha256"] == b["image"]["sha256"] and np.array_equal(*pixels)


def test_the_app_refuses_a_setting_the_model_cannot_serve_and_the_client_names_the_endpoint(
    images_server, tiny_pipeline
):
    client = ImagesAPIGenerator(
        images_server.base_url, str(tiny_pipeline), backoff_s=0.01, spec=FAMILIES["klein-base"]
    )  # allows 200 steps
    with pytest.raises(ImagesAPIError) as caught:
        client.run(dict(prompt="a crane", seed=1, **{**KW, "steps": 120}))
    message = str(caught.value)
    assert f"{images_server.base_url}/images/generations refused the request (400)" in message
    assert "num_inference_steps=120 is outside 1..50" in message  # the server's own reason
    assert client.requests_sent == 1  # a refusal is not retried


def test_an_edit_sends_the_source_and_references_as_image_files_and_the_same_request_twice_is_identical(tiny_pipeline):
    with GarbageServer((200, _json({"data": [{"b64_json": _png()}]}))) as server:
        client = _client(server, tiny_pipeline)
        source, reference = (Image.open(io.BytesIO(base64.b64decode(_png(seed=s)))) for s in (1, 2))
        request = dict(prompt="fold it", seed=7, source=source, references=[reference], **KW)
        client.run(request)
        client.run(request)
    (path, headers, first), (_, headers2, second) = server.received
    assert path == "/v1/images/edits"
    fields, files = _form_fields({k.lower(): v for k, v in headers.items()}, first)
    assert fields == {
        "model": str(tiny_pipeline),
        "prompt": "fold it",
        "n": "1",
        "size": "64x64",
        "response_format": "b64_json",
        "output_format": "png",
        "seed": "7",
        "num_inference_steps": "2",
        "guidance_scale": "1.0",
    }
    assert [np.asarray(Image.open(io.BytesIO(f))).tolist() for f in files] == [
        np.asarray(source).tolist(),
        np.asarray(reference).tolist(),
    ]
    assert _form_fields({k.lower(): v for k, v in headers2.items()}, second) == (fields, files)


@pytest.mark.parametrize(
    "answer, problem",
    [
        (_json({"data": [{"b64_json": _png()}, {"b64_json": _png()}]}), "returned 2 images for a request of n=1"),
        (_json({"data": [{"b64_json": base64.b64encode(b"not a png").decode()}]}), "bytes that are not an image"),
        (_json({"data": [{"b64_json": _png((32, 64))}]}), "returned a 32x64 image for a 64x64 request"),
        (_json({"data": [{"url": "/v1/images/1/content"}]}), "returned no b64_json image"),
        (b"<html>proxy error</html>", "with a body that is not JSON"),
    ],
    ids=["two-images", "not-an-image", "other-size", "url-only", "not-json"],
)
def test_a_garbage_answer_is_a_clear_error_naming_the_endpoint(tiny_pipeline, answer, problem):
    with GarbageServer((200, answer)) as server:
        client = _client(server, tiny_pipeline)
        with pytest.raises(ImagesAPIError) as caught:
            client.run(dict(prompt="a crane", seed=1, **KW))
    assert f"{server.base_url}/images/generations" in str(caught.value) and problem in str(caught.value)
    assert len(server.received) == 1  # garbage is not a transient failure: no retry


def test_overload_and_outages_are_retried_with_backoff(tiny_pipeline):
    with GarbageServer(
        (429, b'{"error": {"message": "busy"}}'), (503, b"{}"), (200, _json({"data": [{"b64_json": _png()}]}))
    ) as server:
        client = _client(server, tiny_pipeline)
        image = client.run(dict(prompt="a crane", seed=1, **KW))
    assert image.size == (64, 64) and len(server.received) == 3
    with GarbageServer((500, b"{}")) as server:
        with pytest.raises(ImagesAPIError, match="failed 3 times; last: HTTP 500"):
            _client(server, tiny_pipeline, retries=2).run(dict(prompt="a crane", seed=1, **KW))
        assert len(server.received) == 3


def test_a_failure_every_retry_would_repeat_is_not_retried_and_a_fault_is(tiny_pipeline):
    """The pipeline raising (the model boundary, injected for two prompts): a ValueError refuses
    these arguments, so the client hears 422 once, with the reason; a RuntimeError may be a
    passing fault, so it is a 500 and retried; the server goes on serving afterwards."""
    pool = pool_for([diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")])
    through_pool = local_generate(pool)

    async def pipeline_with_faults(request):
        if request["prompt"] == "refused":
            raise ValueError("Cannot handle a prompt of 900 tokens; the limit is 512\n(more detail)")
        if request["prompt"] == "fault":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return await through_pool(request)

    with BackgroundServer(images_app(pipeline_with_faults, model=str(tiny_pipeline), spec=pool.spec)) as server:
        client = _client(server, tiny_pipeline, retries=2)
        with pytest.raises(ImagesAPIError) as refused:
            client.run(dict(prompt="refused", seed=1, **KW))
        assert "refused the request (422): the generator cannot make this image: Cannot handle a prompt" in str(
            refused.value
        )
        assert "more detail" not in str(refused.value) and client.requests_sent == 1
        with pytest.raises(ImagesAPIError) as fault:
            client.run(dict(prompt="fault", seed=1, **KW))
        assert "failed 3 times; last: HTTP 500: the generation failed on the server (RuntimeError)" in str(fault.value)
        assert "illegal memory access" not in str(fault.value) and client.requests_sent == 4
        assert client.run(dict(prompt="a crane", seed=1, **KW)).size == (64, 64)


def test_a_run_against_a_garbage_server_fails_naming_it_and_stores_no_image(make_context, tiny_pipeline, runs_dir):
    with GarbageServer((200, _json({"data": [{"b64_json": _png((32, 32))}]}))) as server:
        outcome = start_run(REQUEST, make_context(generator_base_url=server.base_url))
    assert outcome.status == "failed"
    assert f"{server.base_url}/images/generations returned a 32x32 image" in str(outcome.error)
    assert not list(Path(runs_dir).rglob("*.png"))  # nothing from the bad answer was stored


def test_a_bad_endpoint_setting_is_refused_before_anything_is_written(make_context, runs_dir):
    with pytest.raises(ValueError, match="generator_base_url='localhost:8000' must be an http"):
        make_context(generator_base_url="localhost:8000")
    assert not Path(runs_dir).exists()


def test_interleave_batch_sends_every_generation_to_the_images_server(
    images_server, chat_server, tiny_pipeline, runs_dir, tmp_path, capsys
):
    from graph.cli.main import main
    from tools.doubles import demo_script
    from tools.generator.images_api import remote_generator

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I fold a paper crane?\nHow do I fold a paper boat?\n")
    client = remote_generator(images_server.base_url, str(tiny_pipeline))
    sent = client.requests_sent
    code = main(
        [
            "--runs-dir",
            runs_dir,
            "batch",
            "--prompts",
            str(prompts),
            "--name",
            "remote",
            "--concurrency",
            "2",
            "--generator-base-url",
            images_server.base_url,
            "--generator-model",
            str(tiny_pipeline),
            "--planner-base-url",
            chat_server.base_url,
            "--planner-model",
            demo_script.PLANNER_MODEL,
            "--critic-base-url",
            chat_server.base_url,
            "--critic-model",
            demo_script.CRITIC_MODEL,
            "--width",
            "64",
            "--height",
            "64",
            "--num-inference-steps",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert "2 finished" in capsys.readouterr().out
    assert client.requests_sent - sent == 8  # 2 runs x (3 steps + 1 regeneration), all remote


def test_interleave_serve_generator_without_ray_answers_the_images_api(tiny_pipeline, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "graph.cli.main",
            "serve",
            "generator",
            "--model",
            str(tiny_pipeline),
            "--no-ray",
            "--device",
            "cpu",
            "--port",
            str(port),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.3)
        client = ImagesAPIGenerator(f"http://127.0.0.1:{port}/v1", str(tiny_pipeline))
        image = client.run(dict(prompt="a crane", seed=3, **KW))
        pipe = diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")
        assert np.array_equal(np.asarray(image), np.asarray(diffusion.generate(pipe, prompt="a crane", seed=3, **KW)))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_an_unknown_model_before_starting_anything(tmp_path, capsys):
    from graph.cli.main import main

    assert main(["serve", "generator", "--model", str(tmp_path / "missing"), "--no-ray"]) == 2
    assert f"folder {str(tmp_path / 'missing')!r} does not exist" in capsys.readouterr().err


def test_the_api_key_comes_from_the_environment_is_sent_as_bearer_and_never_stored(tiny_pipeline, monkeypatch):
    from graph.context import Context
    from nodes.generator import generator_pool

    monkeypatch.setenv("INTERLEAVE_GENERATOR_API_KEY", "sk-secret")
    with GarbageServer((200, _json({"data": [{"b64_json": _png()}]}))) as server:
        context = Context(generator_base_url=server.base_url, generator_model=str(tiny_pipeline))
        generator_pool(context).run(dict(prompt="a crane", seed=1, **KW))
    assert {k.lower(): v for k, v in server.received[0][1].items()}["authorization"] == "Bearer sk-secret"
    assert "generator_api_key" not in context.to_record()
    assert context.to_record()["generator_base_url"] == server.base_url


def test_doctests_of_the_remote_generator_modules():
    import doctest

    from evals.perf import generator_remote
    from tools.generator import images_api, ray_serve, serve_app

    for module in (images_api, serve_app, ray_serve, generator_remote):
        assert doctest.testmod(module).failed == 0, module.__name__
