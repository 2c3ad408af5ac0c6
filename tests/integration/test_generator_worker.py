"""Sharing one pipeline between concurrent runs: one worker per pipeline, batching what is
queued, progress back on the caller's thread, and one bad request never failing the others."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REQUEST
from graph.runs.runner import start_run
from tools.generator import diffusion
from tools.generator.worker import GeneratorWorker, worker_for


def request(prompt="a red kite", seed=1, size=64, **extra):
    return dict(prompt=prompt, seed=seed, width=size, height=size, steps=2, guidance=1.0, **extra)


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def pipe(tiny_pipeline):
    return diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")


def test_queued_requests_share_pipeline_calls_and_match_their_one_by_one_images(pipe):
    worker = GeneratorWorker(pipe, max_batch=4, gather_s=0.2)
    try:
        jobs = [request(f"kite number {n}", seed=n) for n in range(4)]
        futures = [worker.submit(job) for job in jobs]
        batched = [f.result(timeout=60) for f in futures]
        assert worker.calls < 4 and max(worker.batch_sizes) > 1
        alone = [diffusion.generate(pipe, **job) for job in jobs]
        for a, b in zip(batched, alone):  # batching changes rounding only
            assert np.abs(pixels(a) - pixels(b)).max() <= 2
        assert len({b.tobytes() for b in batched}) == 4  # each request kept its own seed
    finally:
        worker.close()


def test_a_bad_request_fails_alone(pipe):
    worker = GeneratorWorker(pipe, max_batch=4, gather_s=0.2)
    try:
        good = worker.submit(request())
        bad = worker.submit(request(size=60))  # not a multiple of 16
        assert good.result(timeout=60).size == (64, 64)
        with pytest.raises(ValueError, match="width=60 is not a multiple of 16"):
            bad.result(timeout=60)
    finally:
        worker.close()


def test_a_failed_batch_is_sorted_out_request_by_request(pipe):
    results, sizes = diffusion.generate_isolating_failures(pipe, [request(), request(size=60), request(seed=2)])
    assert [type(r).__name__ for r in results] == ["Image", "ValueError", "Image"]
    assert "width=60 is not a multiple of 16" in str(results[1])
    assert sizes == [1, 1]  # the good ones ran alone, once each
    assert pixels(results[0]).tolist() == pixels(diffusion.generate(pipe, **request())).tolist()
    together, sizes = diffusion.generate_isolating_failures(pipe, [request(), request(seed=2)])
    assert sizes == [2] and all(not isinstance(r, Exception) for r in together)


def test_progress_arrives_on_the_callers_thread(pipe):
    worker = GeneratorWorker(pipe)
    try:
        seen = []
        worker.run(request(), on_step=lambda done, total: seen.append((done, total, threading.get_ident())))
        assert [(d, t) for d, t, _ in seen] == [(1, 2), (2, 2)]
        assert {thread for _, _, thread in seen} == {threading.get_ident()}
    finally:
        worker.close()


def test_concurrent_runs_share_one_pipeline_and_one_worker(make_context):
    contexts = [make_context(seed=n) for n in range(3)]
    ctx = contexts[0]
    pipe = diffusion.load_pipeline(ctx.generator_model, ctx.device, ctx.dtype)
    before = sum(worker_for(pipe).batch_sizes)
    outcomes = [None] * 3

    def run(index):
        outcomes[index] = start_run(REQUEST, contexts[index], run_id=f"together-{index}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.status for o in outcomes] == ["finished"] * 3, [o.error for o in outcomes]
    same_model = [p for key, p in diffusion._pipelines.items() if key[0] == ctx.generator_model]
    assert same_model == [pipe]  # nothing loaded a second copy
    # Every generation of every run (3 steps, step 2 twice) went through the one worker.
    assert sum(worker_for(pipe).batch_sizes) - before == 3 * 4


def test_anchored_reference_policy_shows_the_first_image_to_later_edits(make_context):
    outcome = start_run(REQUEST, make_context(reference_policy="anchor-first"))
    assert outcome.status == "finished", outcome.error
    steps = json.loads((Path(outcome.document_dir) / "document.json").read_text())["steps"]
    first = steps[0]["image"]
    assert "references" not in steps[0]["attempts"][0]  # text-to-image
    assert "references" not in steps[1]["attempts"][0]  # its source already is the first image
    assert steps[2]["attempts"][0]["references"] == [first]
    assert steps[2]["attempts"][0]["source"] == steps[1]["image"]


def test_same_seed_same_images_different_seed_different_images(make_context, runs_dir):
    def images(outcome):
        steps = json.loads((Path(outcome.document_dir) / "document.json").read_text())["steps"]
        return [a["image"]["sha256"] for s in steps for a in s["attempts"]]

    first = start_run(REQUEST, make_context(seed=7), run_id="seed-a")
    again = start_run(REQUEST, make_context(seed=7), run_id="seed-b")
    other = start_run(REQUEST, make_context(seed=8), run_id="seed-c")
    assert images(first) == images(again)
    assert not set(images(first)) & set(images(other))


def test_a_pool_sends_each_request_to_the_least_busy_pipeline():
    """Several pipelines (one per GPU on a multi-GPU machine; two CPU copies here) behind one
    entry point: concurrent requests spread over them, and each image is the one its pipeline
    makes for that seed."""
    from tools.generator.worker import GeneratorPool, generator_devices
    from tools.doubles.tiny_klein import build_tiny_klein_pipeline

    pipes = [build_tiny_klein_pipeline(), build_tiny_klein_pipeline()]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    workers = [GeneratorWorker(p, max_batch=1) for p in pipes]
    pool = GeneratorPool(workers)
    try:
        futures = [pool.submit(request(f"kite {n}", seed=n)) for n in range(6)]
        images = [f.result(timeout=120) for f in futures]
        assert [len(w.batch_sizes) for w in workers] == [3, 3]  # spread evenly
        alone = diffusion.generate(pipes[0], **request("kite 4", seed=4))
        assert np.abs(pixels(images[4]) - pixels(alone)).max() <= 2
        assert all(w.load == 0 for w in workers)
    finally:
        for w in workers:
            w.close()
    assert generator_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="names a device twice"):
        generator_devices("cuda:0,cuda:0")
