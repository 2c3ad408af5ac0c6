"""The generator as a real Ray Serve application on a local Ray cluster (CPU, tiny klein pipeline).

The module starts Ray on this machine (2 CPUs, 127.0.0.1), deploys
``tools.generator.ray_serve`` with 2 replicas of one CPU each, and drives it through the images
API exactly as a user's graph would (``generator_base_url``). CPU float sums depend on the
thread count, and Ray gives each one-CPU replica one torch thread, so the in-process baseline
runs with one thread too (on a GPU the thread count plays no part).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import socket
import threading
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch
from PIL import Image
from ray import serve

from conftest import REQUEST, without_timings
from graph.runs.demo import demo_context
from graph.runs.runner import start_run
from nodes import events
from tools.doubles.scripted_chat import ScriptedChatServer
from tools.generator import diffusion
from tools.generator.images_api import remote_generator
from tools.generator.ray_serve import check_replica, generator_application
from tools.judge.judge import judge_from_settings
from training.rewards import StepwiseRewards


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def fleet(tiny_pipeline):
    """Base URL of a 2-replica Ray Serve generator on a Ray cluster started for this module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        generator_application(
            str(tiny_pipeline), num_replicas=2, gpus_per_replica=0, cpus_per_replica=1, device="cpu", dtype="float32"
        ),
        name="generator",
        route_prefix="/",
    )
    # Beside it, one replica batched by our worker thread instead of @serve.batch (no CPU asked
    # for: the two above hold this cluster's two).
    serve.run(
        generator_application(
            str(tiny_pipeline),
            num_replicas=1,
            gpus_per_replica=0,
            cpus_per_replica=0,
            device="cpu",
            dtype="float32",
            batcher="worker",
        ),
        name="generator-worker",
        route_prefix="/worker",
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def one_thread():
    """The in-process baseline with the replicas' thread count (see the module docstring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _replicas() -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::generator#")
    ]


def _wait_for_running_replicas(count: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deployment = serve.status().applications["generator"].deployments["generator"]
        if deployment.replica_states.get("RUNNING", 0) == count and deployment.status == "HEALTHY":
            return deployment.replica_states
        time.sleep(0.5)
    raise AssertionError(f"Ray Serve did not report {count} running replicas: {serve.status()}")


def _document(outcome) -> dict:
    assert outcome.status == "finished", outcome.error
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    return without_timings({k: v for k, v in record.items() if k != "settings"})


def _pixels(runs_dir: Path, document: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(runs_dir / step["image"]["path"])) for step in document["steps"]]


def test_a_run_through_ray_serve_equals_the_in_process_run(fleet, chat_server, tiny_pipeline, tmp_path, one_thread):
    assert _wait_for_running_replicas(2) == {"RUNNING": 2}  # one replica per (CPU here, GPU there)
    remote = start_run(
        REQUEST, demo_context(str(tmp_path / "remote"), chat_server.base_url, tiny_pipeline, generator_base_url=fleet)
    )
    # A fresh copy of the same weights: the in-process pool is then loaded for this run, as each
    # replica was, not reused from an earlier test of the session.
    fresh = shutil.copytree(tiny_pipeline, tmp_path / "tiny-klein")
    local = start_run(REQUEST, demo_context(str(tmp_path / "local"), chat_server.base_url, fresh))
    assert _document(remote) == _document(local)
    for a, b in zip(_pixels(tmp_path / "remote", _document(remote)), _pixels(tmp_path / "local", _document(local))):
        assert np.array_equal(a, b)


def test_a_replica_batched_by_our_worker_thread_gives_the_same_run(
    fleet, chat_server, tiny_pipeline, tmp_path, one_thread
):
    worker_url = fleet.replace("/v1", "/worker/v1")
    remote = start_run(
        REQUEST,
        demo_context(str(tmp_path / "remote"), chat_server.base_url, tiny_pipeline, generator_base_url=worker_url),
    )
    fresh = shutil.copytree(tiny_pipeline, tmp_path / "tiny-klein")
    local = start_run(REQUEST, demo_context(str(tmp_path / "local"), chat_server.base_url, fresh))
    assert _document(remote) == _document(local)
    for a, b in zip(_pixels(tmp_path / "remote", _document(remote)), _pixels(tmp_path / "local", _document(local))):
        assert np.array_equal(a, b)


def test_an_unknown_batcher_is_refused_before_ray_is_asked():
    with pytest.raises(ValueError, match="batcher='queue' must be one of serve, worker"):
        generator_application("black-forest-labs/FLUX.2-klein-4B", batcher="queue")


def test_a_request_that_fails_in_a_serve_batch_fails_alone(fleet):
    handle = serve.get_app_handle("generator")  # past the HTTP checks: straight into @serve.batch
    settings = dict(seed=1, height=64, steps=2, guidance=1.0)
    good = [dict(settings, prompt=f"kite {n}", width=64) for n in range(6)]
    bad = dict(settings, prompt="a crooked kite", width=60)
    calls = [handle.generate_one.remote(r) for r in [*good[:3], bad, *good[3:]]]
    with pytest.raises(ValueError, match="width=60 is not a multiple of 16"):
        calls[3].result(timeout_s=120)
    images = [call.result(timeout_s=120) for n, call in enumerate(calls) if n != 3]
    assert [image.size for image in images] == [(64, 64)] * 6


def test_a_replica_whose_worker_thread_stopped_reports_unhealthy(tiny_pipeline):
    from tools.generator.worker import GeneratorPool, GeneratorWorker

    pipe = diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")
    pool = GeneratorPool([GeneratorWorker(pipe)])
    check_replica(pipe, pool)  # healthy: returns
    pool.workers[0].close()
    with pytest.raises(RuntimeError, match=r"worker thread \[0\] stopped; Ray Serve restarts the replica"):
        check_replica(pipe, pool)
    with pytest.raises(RuntimeError, match="pipeline is not loaded"):
        check_replica(None)


def test_killing_the_replicas_mid_run_retries_and_gives_the_uninterrupted_document(
    fleet, chat_server, tiny_pipeline, tmp_path
):
    # Large enough that an edit takes most of a second on CPU: the kill lands while it runs.
    settings = dict(generator_base_url=fleet, width=512, height=512, num_inference_steps=8)
    _wait_for_running_replicas(2)
    clean = start_run(REQUEST, demo_context(str(tmp_path / "clean"), chat_server.base_url, tiny_pipeline, **settings))
    client = remote_generator(fleet, str(tiny_pipeline))
    sent_before, killed = client.requests_sent, []

    def kill_replicas_soon(chunk) -> None:
        if chunk.get("event") == events.ATTEMPT_STARTED and chunk.get("step_number") == 2 and not killed:

            def kill() -> None:
                time.sleep(0.3)  # the edit request is in flight on a replica now
                for name in _replicas():
                    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
                    killed.append(name)

            threading.Thread(target=kill, daemon=True).start()

    hurt = start_run(
        REQUEST,
        demo_context(str(tmp_path / "hurt"), chat_server.base_url, tiny_pipeline, **settings),
        on_event=kill_replicas_soon,
    )
    assert len(killed) == 2
    assert _document(hurt) == _document(clean)
    attempts = sum(len(step["attempts"]) for step in _document(hurt)["steps"])
    assert client.requests_sent - sent_before > attempts  # the killed request was sent again
    _wait_for_running_replicas(2)  # Ray Serve replaced both replicas
    assert not set(killed) & set(_replicas())


def _scripted_judge(body: dict) -> str:
    """Scores that depend on the judged image's pixels, so equal rewards mean equal images."""
    parts = body["messages"][-1]["content"]
    url = [p for p in parts if p.get("type") == "image_url"][-1]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    score = int(np.asarray(image, dtype=np.int64).sum()) % 11
    return f'<answer>{{"scores": [{score}, {score}], "reasoning": "pixels"}}</answer>'


def _stepwise(regenerate, root: Path, judge_url: str) -> tuple[list[float], list[float], set[str]]:
    judge = judge_from_settings(
        judge_url, "none", "scripted-judge", store_root=root, cache_path=root / "judge-cache.sqlite"
    )
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    # One regeneration per generator call: concurrent requests on a replica would be batched,
    # and a batch rounds differently from one-by-one (tools.generator.diffusion.generate_batch).
    rewards = StepwiseRewards(regenerate, judge, steps=2, guidance=1.0, max_batch=1)
    prompts = ["a red paper crane", "a blue paper crane", "a crane on a desk", "a folded crane"]
    n = len(prompts)
    columns = dict(
        success=[False] * n,
        semantics=[4.0] * n,
        quality=[5.0] * n,
        origin_prompt=["a paper crane"] * n,
        rewritten_prompt=["a crane"] * n,
        from_scratch=[False, False, True, True],
        seed=[11] * n,
        width=[64] * n,
        height=[64] * n,
        images=[[source, source]] * n,
        trainer_state=SimpleNamespace(global_step=1),
    )
    replies = [f'<answer>{{"previous_step_success": false, "refine_prompt": "{p}"}}</answer>' for p in prompts]
    with judge:
        semantics = asyncio.run(rewards.semantics_reward(replies, **columns))
        quality = asyncio.run(rewards.quality_reward(replies, **columns))
    assert rewards.totals["regenerated"] == n and rewards.totals["generator_failed"] == 0
    return semantics, quality, {p.name for p in (root / "images").rglob("*.png")}


def test_the_grpo_stepwise_reward_through_ray_serve_equals_the_in_process_reward(
    fleet, tiny_pipeline, tmp_path, one_thread
):
    _wait_for_running_replicas(2)
    pipe = diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")
    with ScriptedChatServer(_scripted_judge) as judge:
        local = _stepwise(functools.partial(diffusion.generate_batch, pipe), tmp_path / "local", judge.base_url)
        remote = _stepwise(
            remote_generator(fleet, str(tiny_pipeline)).generate_batch, tmp_path / "remote", judge.base_url
        )
    assert remote == local
    assert len(local[2]) == 5  # the source and 4 regenerations, identical files on both sides
