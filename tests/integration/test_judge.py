"""The judge against a real OpenAI-compatible HTTP server on 127.0.0.1 whose replies make the
expected scores exact: what it sends, what it computes, what it caches, how it fails."""

import base64
import io
import math
import re
import threading
import time

import pytest
from PIL import Image

from tools.judge.judge import Judge, judge_from_settings
from tools.judge.cache import JudgeCache
from tools.llm.chat import openai_model
from tools.store.images import ImageStore, blank_canvas
from conftest import SC_REPLY
from tools.doubles.scripted_chat import ScriptedChatServer, count_images, request_text


@pytest.fixture
def server(judge_server):
    return judge_server()  # SC 8 and 6, PQ 9 and 4


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "runs")


@pytest.fixture
def images(store):
    return {
        name: store.put(Image.new("RGB", (64, 48), color))
        for name, color in (("before", (20, 90, 200)), ("after", (200, 90, 20)), ("other", (10, 200, 10)))
    }


def make_judge(base_url, tmp_path, model="judge-m", **options):
    options.setdefault("http_retries", 0)
    return judge_from_settings(
        base_url,
        "test-key",
        model,
        store_root=tmp_path / "runs",
        cache_path=tmp_path / "cache" / "judge.sqlite",
        **options,
    )


def image_of(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_scores_come_from_two_calls_with_the_right_images(server, tmp_path, images):
    with make_judge(server.base_url, tmp_path) as judge:
        result = judge.judge(images["before"], images["after"], "put a red hat on the cat")
    assert result.ok and result.error is None and result.reason is None
    assert (result.edit_success, result.over_editing, result.sc) == (8.0, 6.0, 6.0)
    assert (result.naturalness, result.artifacts, result.pq) == (9.0, 4.0, 4.0)
    assert result.overall == pytest.approx(math.sqrt(24))
    assert (result.reasoning_sc, result.reasoning_pq) == ("the hat is there", "some blur")
    assert (result.judge_model, result.cached) == ("judge-m", False)
    semantic, quality = server.requests
    assert count_images(semantic) == 2 and count_images(quality) == 1
    assert {semantic["model"], quality["model"]} == {"judge-m"}
    assert "put a red hat on the cat" in request_text(semantic)
    assert "from scratch" not in request_text(semantic)
    before_part, after_part = semantic["messages"][1]["content"][:2]
    assert image_of(before_part).getpixel((0, 0)) == (20, 90, 200)
    assert image_of(after_part).getpixel((0, 0)) == (200, 90, 20)
    assert image_of(quality["messages"][1]["content"][0]).getpixel((0, 0)) == (200, 90, 20)


def test_no_before_image_sends_a_white_canvas_and_judges_from_scratch(server, tmp_path, images, store):
    with make_judge(server.base_url, tmp_path) as judge:
        result = judge.judge(None, images["after"], "a cat in a red hat")
        semantic = server.requests[0]
        canvas = image_of(semantic["messages"][1]["content"][0])
        assert canvas.size == (64, 48)
        assert canvas.convert("RGB").getextrema() == ((255, 255),) * 3
        assert "from scratch" in request_text(semantic)
        assert result.ok and result.overall == pytest.approx(math.sqrt(24))
        # A stored white canvas as the before-image (the critic's step-1 source) is the same
        # question: it is answered from the cache.
        again = judge.judge(store.put(blank_canvas(64, 48)), images["after"], "a cat in a red hat")
    assert again.cached and again.overall == result.overall
    assert len(server.requests) == 2


def test_the_same_question_is_answered_from_the_cache(server, tmp_path, images):
    with make_judge(server.base_url, tmp_path) as judge:
        first = judge.judge(images["before"], images["after"], "add a hat")
        second = judge.judge(images["before"], images["after"], "  add a hat ")
    assert len(server.requests) == 2
    assert second.cached and not first.cached
    assert second.as_dict() | {"cached": False} == first.as_dict()
    # A new Judge (a rerun) on the same cache file costs nothing either.
    with make_judge(server.base_url, tmp_path) as rerun:
        assert rerun.judge(images["before"], images["after"], "add a hat").cached
    assert len(server.requests) == 2


def test_another_instruction_image_model_or_prompt_version_is_asked_again(server, tmp_path, images):
    with make_judge(server.base_url, tmp_path) as judge:
        judge.judge(images["before"], images["after"], "add a hat")
        assert not judge.judge(images["before"], images["after"], "add a scarf").cached
        assert not judge.judge(images["other"], images["after"], "add a hat").cached
        assert not judge.judge(images["before"], images["other"], "add a hat").cached
        assert not judge.judge(None, images["after"], "add a hat").cached
    with make_judge(server.base_url, tmp_path, model="judge-n") as other_model:
        assert not other_model.judge(images["before"], images["after"], "add a hat").cached
    chat = openai_model(server.base_url, "test-key", "judge-m", 2048, 0.0, 120.0, 0)
    with Judge(
        chat,
        model_name="judge-m",
        store_root=tmp_path / "runs",
        cache_path=tmp_path / "cache" / "judge.sqlite",
        prompt_version="judge-v0",
    ) as old:
        assert not old.judge(images["before"], images["after"], "add a hat").cached
    # Seven SC questions; the PQ question shows the after-image alone, so it is asked once per
    # (after-image, judge model, prompt version): after, other, judge-n, judge-v0.
    assert len(server.requests) == 7 + 4
    with JudgeCache(tmp_path / "cache" / "judge.sqlite") as cache:
        assert len(cache) == 7 + 4


def test_unusable_replies_become_a_recorded_failure_retried_only_when_asked(judge_server, tmp_path, images):
    answers = {"sc": "I'd say roughly an eight, maybe a six."}
    server = judge_server(sc=lambda body: answers["sc"])
    with make_judge(server.base_url, tmp_path, retries=2) as judge:
        failed = judge.judge(images["before"], images["after"], "add a hat")
        assert not failed.ok and failed.reason == "no_answer"
        assert "semantic consistency: [no_answer]" in failed.error and "3 replies" in failed.error
        assert (failed.sc, failed.edit_success, failed.over_editing, failed.overall) == (None,) * 4
        assert failed.pq == 4.0  # the half that was judged keeps its score
        sc_requests = [r for r in server.requests if count_images(r) == 2]
        assert len(sc_requests) == 3 and len(server.requests) == 4
        # Retries re-sample: a greedy retry would give the same reply again.
        assert [r.get("temperature") for r in sc_requests] == [0.0, 0.7, 0.7]

        cached = judge.judge(images["before"], images["after"], "add a hat")
        assert cached.cached and cached.error == failed.error and cached.sc is None
        assert len(server.requests) == 4

        answers["sc"] = SC_REPLY
        retried = judge.judge(images["before"], images["after"], "add a hat", retry_failed=True)
        assert retried.ok and not retried.cached and retried.overall == pytest.approx(math.sqrt(24))
        assert len(server.requests) == 5 and count_images(server.requests[-1]) == 2  # SC only
        assert judge.judge(images["before"], images["after"], "add a hat").cached


def test_out_of_range_scores_are_a_schema_failure(judge_server, tmp_path, images):
    out_of_range = '<answer>{"scores": [11, 6]}</answer>'
    server = judge_server(sc=out_of_range, pq=out_of_range)
    with make_judge(server.base_url, tmp_path, retries=1) as judge:
        result = judge.judge(images["before"], images["after"], "add a hat")
    assert result.reason == "schema" and (result.sc, result.pq, result.overall) == (None,) * 3
    assert len(server.requests) == 4


def test_a_batch_keeps_order_and_never_exceeds_the_concurrency_bound(tmp_path, store):
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def slow(body):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        number = int(re.search(r"item (\d+)", request_text(body)).group(1)) if count_images(body) == 2 else 10
        return f'<answer>{{"scores": [{number}, 10]}}</answer>'

    afters = [store.put(Image.new("RGB", (32, 32), (i * 20, 0, 0))) for i in range(10)]
    items = [(None, afters[i], f"item {i}") for i in range(10)]
    items.append(items[3])  # asked once, answered twice
    progress = []
    with ScriptedChatServer(slow) as server, make_judge(server.base_url, tmp_path, max_concurrency=3) as judge:
        results = judge.judge_many(items, on_done=lambda done, total: progress.append((done, total)))
    assert [r.sc for r in results] == [float(i) for i in range(10)] + [3.0]
    assert [r.cached for r in results].count(True) == 1 and results[10].cached
    assert len(server.requests) == 20
    assert 2 <= state["peak"] <= 3
    assert progress == [(i, 11) for i in range(1, 12)]


def test_a_bad_item_is_refused_before_any_request(server, tmp_path, images):
    with make_judge(server.base_url, tmp_path) as judge:
        with pytest.raises(ValueError, match="item 1: the instruction"):
            judge.judge_many([(None, images["after"], "ok"), (None, images["after"], " ")])
        with pytest.raises(ValueError, match="ImageRef"):
            judge.judge(None, "after.png", "ok")
    assert server.requests == []


def test_an_endpoint_that_is_down_is_a_failure_not_an_exception(judge_server, tmp_path, images):
    with make_judge("http://127.0.0.1:9/v1", tmp_path, timeout_s=5) as judge:
        results = judge.judge_many([(images["before"], images["after"], "add a hat"), (None, images["after"], "a hat")])
    for result in results:
        assert result.reason == "endpoint" and "refused the connection" in result.error
        assert (result.sc, result.pq, result.overall) == (None, None, None)
    # Such a failure says nothing about the images: once the server is up it is asked again.
    server = judge_server()
    with make_judge(server.base_url, tmp_path) as judge:
        result = judge.judge(images["before"], images["after"], "add a hat")
    assert result.ok and not result.cached and len(server.requests) == 2


def test_a_missing_image_file_is_a_failure_with_reason_image(server, tmp_path, images, store):
    store.path(images["other"]).unlink()
    with make_judge(server.base_url, tmp_path) as judge:
        result = judge.judge(images["before"], images["other"], "add a hat")
    assert result.reason == "image" and "missing" in result.error and result.overall is None
    assert server.requests == []
