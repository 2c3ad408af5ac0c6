"""``interleave serve generator`` on Ray: the command itself deploys the fleet (a local Ray cluster
it starts, as on a machine without ``ray start``), and the deployed API answers like the pipeline."""

from __future__ import annotations

import socket

import numpy as np
import ray
import torch
from ray import serve

from graph.cli.main import main
from tools.generator import diffusion
from tools.generator.images_api import ImagesAPIGenerator

KW = dict(width=64, height=64, steps=2, guidance=1.0)


def test_serve_generator_deploys_replicas_on_ray_that_answer_the_images_api(tiny_pipeline, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        assert (
            main(
                [
                    "serve",
                    "generator",
                    "--model",
                    str(tiny_pipeline),
                    "--num-replicas",
                    "2",
                    "--cpus-per-replica",
                    "1",
                    "--device",
                    "cpu",
                    "--dtype",
                    "float32",
                    "--port",
                    str(port),
                    "--detach",
                ]
            )
            == 0
        )
        assert f"http://127.0.0.1:{port}/v1 (Ray Serve, 2 replica(s), 0 GPU each)" in capsys.readouterr().err
        deployment = serve.status().applications["generator"].deployments["generator"]
        assert deployment.replica_states == {"RUNNING": 2}
        image = ImagesAPIGenerator(f"http://127.0.0.1:{port}/v1", str(tiny_pipeline)).run(
            dict(prompt="a crane", seed=5, **KW)
        )
        assert image.size == (64, 64)
        pipe = diffusion.load_pipeline(str(tiny_pipeline), "cpu", "float32")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a one-CPU replica (float sums depend on the thread count)
        try:
            local = diffusion.generate(pipe, prompt="a crane", seed=5, **KW)
        finally:
            torch.set_num_threads(threads)
        assert np.array_equal(np.asarray(image), np.asarray(local))
    finally:
        serve.shutdown()
        ray.shutdown()


def test_autoscale_must_be_min_colon_max(tiny_pipeline, capsys):
    assert main(["serve", "generator", "--model", str(tiny_pipeline), "--autoscale", "4"]) == 2
    assert "--autoscale '4' must be MIN:MAX" in capsys.readouterr().err
