"""The offline demo: the whole product with random-weight models, no downloads, no GPU.

It builds a tiny random-weight FLUX.2 [klein] pipeline once (cached in the runs directory),
loads it through the same ``from_pretrained`` path as real weights, and serves scripted planner
and critic replies from an OpenAI-compatible server on 127.0.0.1 for the length of the run.
The images are noise: the models have random weights. Everything else (planning, the critic's
rejection and regeneration, checkpoints, documents) is the real thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from graph.context import Context
from graph.runs.runner import EventHandler, RunOutcome, start_run

DEFAULT_REQUEST = "How do I fold a paper crane?"
DEMO_SIZE = 128
DEMO_STEPS = 2


def demo_pipeline_path(runs_dir: str) -> Path:
    """Build (first time only) and return the tiny klein pipeline folder in the runs directory."""
    from tools.generator.diffusion import silence_library_progress_bars
    from tools.doubles.tiny_klein import save_tiny_klein

    from tools.store.documents import RANDOM_WEIGHTS_MARKER

    silence_library_progress_bars()
    folder = save_tiny_klein(Path(runs_dir) / "_demo" / "tiny-flux2-klein")
    marker = folder / RANDOM_WEIGHTS_MARKER  # documents made with it say their images are noise
    if not marker.exists():
        marker.write_text("The weights in this folder are random (interleave demo).\n")
    return folder


def demo_context(runs_dir: str, server_url: str, pipeline_path: Path, **overrides) -> Context:
    from tools.doubles.demo_script import CRITIC_MODEL, PLANNER_MODEL

    settings = dict(
        planner_base_url=server_url,
        planner_model=PLANNER_MODEL,
        planner_api_key="demo",
        critic_base_url=server_url,
        critic_model=CRITIC_MODEL,
        critic_api_key="demo",
        generator_model=str(pipeline_path),
        device="cpu",
        dtype="float32",
        width=DEMO_SIZE,
        height=DEMO_SIZE,
        num_inference_steps=DEMO_STEPS,
        runs_dir=runs_dir,
    )
    settings.update(overrides)
    return Context(**settings)


def run_demo(runs_dir: str, request: str = DEFAULT_REQUEST, *, on_event: EventHandler | None = None) -> RunOutcome:
    from tools.doubles import demo_script
    from tools.doubles.scripted_chat import ScriptedChatServer

    pipeline = demo_pipeline_path(runs_dir)
    with ScriptedChatServer(demo_script.respond) as server:
        context = demo_context(runs_dir, server.base_url, pipeline)
        return start_run(request, context, on_event=on_event)


def is_demo_run(settings: dict) -> bool:
    """Whether stored run settings are the demo's: scripted planner/critic and the random-weight
    pipeline (its folder carries the marker that ``demo_pipeline_path`` writes)."""
    from tools.doubles.demo_script import CRITIC_MODEL, PLANNER_MODEL
    from tools.store.documents import random_weights

    return (
        settings.get("planner_model") == PLANNER_MODEL
        and settings.get("critic_model") == CRITIC_MODEL
        and random_weights(settings)
    )


@contextmanager
def demo_endpoints(runs_dir: str, run_id: str, overrides: dict) -> Iterator[dict]:
    """Overrides for resuming or forking ``run_id``: for a demo run whose caller gave no
    endpoints, a fresh scripted server (the one that served the run is gone with its process)
    and its URL as both endpoints; for any other run, ``overrides`` as they are."""
    from checkpoints.registry import RunRegistry
    from checkpoints.saver import connect

    given = any(overrides.get(f"{role}_base_url") for role in ("planner", "critic"))
    with closing(connect(runs_dir, create=False)) as conn:
        settings = RunRegistry(conn).get(run_id)["settings"]
    if given or not is_demo_run(settings):
        yield overrides
        return
    from tools.doubles import demo_script
    from tools.doubles.scripted_chat import ScriptedChatServer

    with ScriptedChatServer(demo_script.respond) as server:
        yield {**overrides, "planner_base_url": server.base_url, "critic_base_url": server.base_url}
