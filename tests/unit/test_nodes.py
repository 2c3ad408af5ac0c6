"""Each node called directly, with a state and a runtime built by hand: what a node returns is
exactly the keys it owns, and the events it streams are what Studio and the CLI show. The chat
models are LangChain's own fake chat models (the model boundary); images are real PNGs in a
real image store on a temporary folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image

from graph.context import Context
from nodes.compose import accept, compose
from nodes.critic import critique
from tools.llm.chat import ChatModels
from tools.store.images import ImageStore

PLAN = [
    {
        "step_number": 1,
        "step_name": "Start",
        "instruction": "Lay out the paper.",
        "prompt": "a square of paper on a desk",
        "auxiliary_text": None,
    },
    {
        "step_number": 2,
        "step_name": "Fold",
        "instruction": "Fold it in half.",
        "prompt": "fold the paper in half",
        "auxiliary_text": "Crease it firmly.",
    },
]


def runtime(tmp_path, **settings):
    events: list[dict] = []
    ctx = Context(runs_dir=str(tmp_path), **{"vlm_retries": 1, "vlm_retry_backoff_s": 0.0, **settings})
    return SimpleNamespace(context=ctx, stream_writer=events.append), events


def attempt(store: ImageStore, step_number: int, number: int, prompt: str, source=None) -> dict:
    image = store.put(Image.new("RGB", (32, 32), (40 * step_number, 90, 30 * number)))
    return {
        "step_number": step_number,
        "attempt": number,
        "prompt": prompt,
        "seed": 7,
        "source": source,
        "image": image,
        "last_allowed": False,
        "verdict": None,
        "generate_s": 0.1,
        "critique_s": None,
    }


def state_at(step_index: int, attempts: list[dict], accepted: list[dict] | None = None) -> dict:
    return {
        "run_id": "paper-1",
        "request": "fold paper",
        "plan": PLAN,
        "step_index": step_index,
        "attempts": attempts,
        "accepted": accepted or [],
    }


def reply(success: bool, refine: str) -> str:
    answer = json.dumps({"previous_step_success": success, "refine_prompt": refine})
    return f"<think>checked the fold</think><answer>{answer}</answer>"


def test_the_critic_returns_its_verdict_on_the_newest_attempt_and_streams_it(tmp_path):
    rt, events = runtime(tmp_path)
    store = ImageStore(tmp_path)
    first = attempt(store, 2, 1, "fold the paper in half")
    models = ChatModels(
        critic=FakeListChatModel(responses=[reply(False, "fold the paper exactly in half, edges aligned")])
    )
    out = critique(state_at(1, [first]), rt, models=models)
    (judged,) = out["attempts"]
    assert (judged["step_number"], judged["attempt"]) == (2, 1)
    assert judged["verdict"]["success"] is False
    assert judged["verdict"]["refine_prompt"] == "fold the paper exactly in half, edges aligned"
    assert [e["event"] for e in events] == ["verdict"]
    assert events[0]["success"] is False and events[0]["step_number"] == 2


def test_an_unreadable_critic_reply_is_neither_a_pass_nor_a_fail(tmp_path):
    rt, _ = runtime(tmp_path)
    store = ImageStore(tmp_path)
    models = ChatModels(critic=FakeListChatModel(responses=["looks fine to me", "still no tags"]))
    out = critique(state_at(0, [attempt(store, 1, 1, PLAN[0]["prompt"])]), rt, models=models)
    verdict = out["attempts"][0]["verdict"]
    assert verdict["success"] is None and verdict["refine_prompt"] is None
    assert verdict["error"] and "looks fine" not in verdict["error"]
    assert verdict["fallback"] == "regenerate"  # the default critic_unparsed policy


def test_an_unusable_verdict_names_its_reason_once_and_each_retry_is_streamed(tmp_path):
    """The stored error says what was wrong once ("(no_answer): ..."), not "[no_answer] ...
    (no_answer)"; the person waiting hears of the re-ask while it happens, not only at the end."""
    rt, events = runtime(tmp_path, vlm_retries=2)
    store = ImageStore(tmp_path)
    models = ChatModels(critic=FakeListChatModel(responses=["looks fine to me"]))
    out = critique(state_at(0, [attempt(store, 1, 1, PLAN[0]["prompt"])]), rt, models=models)
    error = out["attempts"][0]["verdict"]["error"]
    assert error == "critic reply is not a valid verdict (no_answer): no <answer> tag and no {...} object found"
    retries = [e for e in events if e["event"] == "reply_retry"]
    assert [(e["role"], e["try"], e["tries"], e["reason"]) for e in retries] == [
        ("critic", 1, 3, "no_answer"),
        ("critic", 2, 3, "no_answer"),
    ]
    assert all((e["step_number"], e["attempt"], e["run_id"]) == (1, 1, "paper-1") for e in retries)
    assert [e["event"] for e in events][-1] == "verdict"  # the retries came first


def test_accepting_a_step_takes_its_newest_attempt_and_moves_on(tmp_path):
    rt, events = runtime(tmp_path)
    store = ImageStore(tmp_path)
    tries = [attempt(store, 1, 1, "a"), attempt(store, 1, 2, "b")]
    out = accept(state_at(0, tries), rt)
    assert out == {"accepted": [{"step_number": 1, "attempt": 2, "image": tries[1]["image"]}], "step_index": 1}
    assert events[0]["event"] == "step_accepted" and events[0]["steps_total"] == 2


def test_compose_writes_the_document_with_each_steps_text_and_image(tmp_path):
    rt, events = runtime(tmp_path)
    store = ImageStore(tmp_path)
    tries = [attempt(store, 1, 1, PLAN[0]["prompt"]), attempt(store, 2, 1, PLAN[1]["prompt"])]
    accepted = [{"step_number": a["step_number"], "attempt": 1, "image": a["image"]} for a in tries]
    out = compose(state_at(2, tries, accepted), rt)
    # The text shown is the auxiliary text when the plan has one, else the instruction.
    assert [(e["step_number"], e["text"]) for e in out["document"]] == [
        (1, "Lay out the paper."),
        (2, "Crease it firmly."),
    ]
    folder = tmp_path / "paper-1"
    assert out["document_dir"] == str(folder)
    record = json.loads((folder / "document.json").read_text())
    assert record["request"] == "fold paper"
    assert "Crease it firmly." in (folder / "document.html").read_text()
    assert events[-1]["event"] == "run_finished"


def test_compose_refuses_a_stored_run_id_that_would_write_outside_the_runs_folder(tmp_path):
    rt, _ = runtime(tmp_path / "runs")
    store = ImageStore(tmp_path / "runs")
    tries = [attempt(store, 1, 1, PLAN[0]["prompt"]), attempt(store, 2, 1, PLAN[1]["prompt"])]
    accepted = [{"step_number": a["step_number"], "attempt": 1, "image": a["image"]} for a in tries]
    state = {**state_at(2, tries, accepted), "run_id": "../escaped"}
    import pytest

    with pytest.raises(ValueError):
        compose(state, rt)
    assert not (tmp_path / "escaped").exists()
