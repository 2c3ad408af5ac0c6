"""Guidance mode end to end: requests with the user's own images, through the real graph, the tiny
klein pipeline and a scripted OpenAI-compatible server on 127.0.0.1 (SPEC §2)."""

import base64
import io
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from graph.runs.runner import start_run
from nodes.guidance import ImageMarkerError
from tools.doubles import demo_script
from tools.store.images import ImageStore
from tools.doubles.scripted_chat import count_images


def image_file(folder: Path, name: str, colour: tuple[int, int, int], size=(96, 64)) -> str:
    path = folder / name
    Image.new("RGB", size, colour).save(path)
    return str(path)


def requests_of(server, model):
    return [r for r in server.requests if r["model"] == model]


def image_urls(body) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


def decoded(url: str) -> Image.Image:
    if url.startswith("file://"):
        return Image.open(url[len("file://") :])
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_continuing_a_sequence_numbers_after_the_given_images_and_edits_the_last_one(
    make_context, chat_server, tmp_path
):
    given = [image_file(tmp_path, "a.png", (200, 30, 30)), image_file(tmp_path, "b.png", (30, 30, 200))]
    request = "My sketch started like this <image> and now looks like this <image>. Continue it."
    outcome = start_run(request, make_context(), images=given)
    assert outcome.status == "finished", outcome.error

    # The planner saw the images where the markers stood, in order.
    planner_call = requests_of(chat_server, demo_script.PLANNER_MODEL)[0]
    kinds = [part["type"] for part in planner_call["messages"][-1]["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]

    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    assert record["plan_mode"] == "continue"
    assert [s["step_number"] for s in record["steps"]] == [1, 2, 3, 4]
    given_refs = record["input_images"]
    assert [s["image"] for s in record["steps"][:2]] == given_refs  # the given images open it
    first_new = record["steps"][2]["attempts"][0]
    assert first_new["source"] == given_refs[1]  # step 3 edits the last given image
    assert record["steps"][3]["attempts"][0]["source"] == record["steps"][2]["image"]
    # The critic's before-image for step 3 is that given image.
    critic_call = requests_of(chat_server, demo_script.CRITIC_MODEL)[0]
    before = decoded(image_urls(critic_call)[0]).convert("RGB")
    assert before.getpixel((5, 5)) == (30, 30, 200)


def test_answering_about_given_images_generates_nothing(make_context, chat_server, tmp_path):
    given = [image_file(tmp_path, f"{n}.png", (40 * n, 90, 90)) for n in (1, 2, 3)]
    seen = []
    outcome = start_run("What does each photo show?", make_context(), images=given, on_event=seen.append)
    assert outcome.status == "finished", outcome.error
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    assert record["plan_mode"] == "answer"
    assert [s["text"] for s in record["steps"]] == [f"Image {k} shows stage {k} of the process." for k in (1, 2, 3)]
    assert [s["image"] for s in record["steps"]] == record["input_images"]
    assert all(s["attempts"] == [] for s in record["steps"])
    assert requests_of(chat_server, demo_script.CRITIC_MODEL) == []
    assert not [e for e in seen if e["event"] == "attempt_started"]


def test_markers_that_do_not_match_the_images_are_refused_before_anything_is_written(make_context, tmp_path, runs_dir):
    given = [image_file(tmp_path, "a.png", (1, 2, 3)), image_file(tmp_path, "b.png", (4, 5, 6))]
    with pytest.raises(ImageMarkerError, match="1 <image> marker.* 2 image"):
        start_run("Only one marker <image> here", make_context(), images=given, run_id="nope")
    database = Path(runs_dir) / "interleave.sqlite"
    if database.exists():
        with sqlite3.connect(database) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "runs" in tables:
                assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


@pytest.mark.parametrize("transport", ["data", "file"])
def test_eight_input_images_each_stay_within_the_crowded_message_cap(make_context, chat_server, tmp_path, transport):
    given = [image_file(tmp_path, f"{n}.png", (25 * n, 60, 60), size=(1024, 768)) for n in range(8)]
    outcome = start_run("Explain each picture.", make_context(vlm_image_transport=transport), images=given)
    assert outcome.status == "finished", outcome.error
    urls = image_urls(requests_of(chat_server, demo_script.PLANNER_MODEL)[0])
    assert len(urls) == 8
    assert all(u.startswith("file://" if transport == "file" else "data:image/jpeg;base64,") for u in urls)
    sizes = [decoded(u).size for u in urls]
    assert all(w * h <= 384 * 384 for w, h in sizes), sizes
    assert sizes[0] == (443, 332)  # aspect kept (1024x768 scaled to fit 384x384 pixels)
    # The stored inputs keep their full size; only the message copies are small.
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    assert {(r["width"], r["height"]) for r in record["input_images"]} == {(1024, 768)}


def test_two_images_are_sent_as_stored_png_up_to_the_run_cap(make_context, chat_server, tmp_path):
    given = [
        image_file(tmp_path, "a.png", (9, 9, 9), size=(1200, 1200)),
        image_file(tmp_path, "b.png", (99, 9, 9), size=(300, 200)),
    ]
    outcome = start_run("Continue <image> <image>", make_context(vlm_image_max_pixels=512 * 512), images=given)
    assert outcome.status == "finished", outcome.error
    urls = image_urls(requests_of(chat_server, demo_script.PLANNER_MODEL)[0])
    assert decoded(urls[0]).size == (512, 512)  # over the run's cap: downscaled
    store = ImageStore(make_context().runs_dir)
    record = json.loads((Path(outcome.document_dir) / "document.json").read_text())
    small = record["input_images"][1]
    assert base64.b64decode(urls[1].split(",", 1)[1]) == store.read_png(small)  # sent as stored
    assert count_images(requests_of(chat_server, demo_script.PLANNER_MODEL)[0]) == 2
