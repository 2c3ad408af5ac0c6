"""The in-process transformers planner/critic backend on a tiny random Qwen3-VL (CPU).

The tiny model is saved once per session and loaded by path, through the same
``from_pretrained`` code path as a real checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import threading

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from tools.llm.chat import complete
from tools.llm.local import ModelLoadError, TransformersChatModel, load_vlm


def png_bytes(seed: int, size: int = 64) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(seed)).decode("ascii")


def critic_messages(before: int = 1, after: int = 2, text: str = "Original instruction: make the sky orange"):
    return [
        SystemMessage("You judge one editing step."),
        HumanMessage([image_part(data_url(before)), image_part(data_url(after)), {"type": "text", "text": text}]),
    ]


def greedy(path: str, **overrides) -> TransformersChatModel:
    return TransformersChatModel(model_path=path, **{"temperature": 0.0, "max_new_tokens": 12, **overrides})


def test_two_images_and_text_give_a_text_reply(tiny_vlm):
    reply = greedy(tiny_vlm).invoke(critic_messages())

    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["input_tokens"] > 8  # 2 images x 4 tokens + the text
    assert reply.usage_metadata["output_tokens"] <= 12
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


def test_the_model_sees_the_images(tiny_vlm):
    model = greedy(tiny_vlm)
    assert model.invoke(critic_messages(1, 2)).content != model.invoke(critic_messages(1, 3)).content


def test_file_urls_and_paths_read_the_same_image_as_data_urls(tiny_vlm, tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "b.png").write_bytes(png_bytes(2))
    text = {"type": "text", "text": "compare"}
    model = greedy(tiny_vlm)

    by_data = model.invoke([HumanMessage([image_part(data_url(1)), image_part(data_url(2)), text])])
    by_file = model.invoke(
        [HumanMessage([image_part((tmp_path / "a.png").as_uri()), image_part(str(tmp_path / "b.png")), text])]
    )
    assert by_data.content == by_file.content


def test_finish_reason_is_length_when_the_token_budget_runs_out(tiny_vlm):
    reply = greedy(tiny_vlm).invoke(critic_messages(), max_new_tokens=3)

    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 3


def test_stop_strings_cut_the_reply(tiny_vlm):
    model = greedy(tiny_vlm, max_new_tokens=16)
    full = model.invoke(critic_messages()).content
    marker = full[len(full) // 2 : len(full) // 2 + 2]
    prefix = full.split(marker, 1)[0]

    reply = model.invoke(critic_messages(), stop=[marker])
    assert reply.content == prefix
    assert reply.response_metadata["finish_reason"] == "stop"


def test_batch_runs_one_generate_call_and_matches_one_by_one(tiny_vlm, monkeypatch):
    model = greedy(tiny_vlm)
    inputs = [
        critic_messages(1, 2),
        [HumanMessage("Plan a visual story about a small cat in four steps.")],
        critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center"),
    ]
    one_by_one = [model.invoke(messages).content for messages in inputs]

    loaded = model.loaded
    calls = []
    real_generate = loaded.model.generate
    monkeypatch.setattr(
        loaded.model, "generate", lambda **kw: calls.append(kw["input_ids"].shape) or real_generate(**kw)
    )
    replies = model.batch(inputs)

    assert len(calls) == 1 and calls[0][0] == 3
    assert [r.content for r in replies] == one_by_one
    assert all(r.response_metadata["batch_size"] == 3 for r in replies)
    assert len(set(one_by_one)) == 3


def test_abatch_matches_batch(tiny_vlm):
    model = greedy(tiny_vlm)
    inputs = [critic_messages(1, 2), critic_messages(2, 1)]
    assert [r.content for r in asyncio.run(model.abatch(inputs))] == [r.content for r in model.batch(inputs)]


def test_batch_reports_a_bad_input_without_losing_the_others(tiny_vlm):
    model = greedy(tiny_vlm)
    bad = [HumanMessage([image_part("https://example.com/x.png")])]
    replies = model.batch([critic_messages(), bad], return_exceptions=True)

    assert isinstance(replies[0], AIMessage) and isinstance(replies[1], ValueError)
    with pytest.raises(ValueError, match="data URL"):
        model.batch([critic_messages(), bad])


def test_same_seed_same_sample_and_retries_resample(tiny_vlm):
    def sampler(seed):
        return TransformersChatModel(model_path=tiny_vlm, temperature=1.0, max_new_tokens=16, seed=seed)

    first, second, other = sampler(7), sampler(7), sampler(8)
    a = first.invoke(critic_messages()).content
    assert a == second.invoke(critic_messages()).content
    assert a != other.invoke(critic_messages()).content
    assert a != first.invoke(critic_messages()).content  # the next call on an instance re-samples


def test_weights_load_once_for_instances_sharing_a_path(tiny_vlm, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    path = str(tmp_path / "copy")
    shutil.copytree(tiny_vlm, path)  # a fresh cache key
    loads = []
    real = AutoModelForImageTextToText.from_pretrained
    monkeypatch.setattr(
        AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    planner, critic = greedy(path), greedy(path, max_new_tokens=4)

    threads = [threading.Thread(target=m.invoke, args=(critic_messages(),)) for m in (planner, critic)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert planner.loaded.model is critic.loaded.model is load_vlm(path).model


def test_missing_folder_raises_a_typed_error_that_says_what_to_do(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        greedy(missing).invoke("hello")
    assert missing in str(info.value) and "hf download" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_incomplete_folder_names_the_missing_files(tiny_vlm, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_vlm, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="incomplete: missing weights"):
        greedy(str(broken)).invoke("hello")


def test_unsupported_inputs_are_refused_clearly(tiny_vlm):
    model = greedy(tiny_vlm)
    with pytest.raises(ValueError, match="base64"):
        model.invoke([HumanMessage([image_part("data:text/plain,hello")])])
    with pytest.raises(ValueError, match="does not exist"):
        model.invoke([HumanMessage([image_part("/no/such/image.png")])])
    with pytest.raises(ValueError, match="unsupported option"):
        model.invoke("hello", top_k=3)
    with pytest.raises(ValueError, match="dtype"):
        TransformersChatModel(model_path=tiny_vlm, dtype="int8")
    with pytest.raises(ValueError, match="not a torch device"):
        TransformersChatModel(model_path=tiny_vlm, device="gpu").invoke("hello")


def test_works_through_chat_complete(tiny_vlm):
    text, finish = complete(greedy(tiny_vlm), critic_messages(), "critic", temperature=0.0)

    assert isinstance(text, str) and text
    assert finish in ("stop", "length")


def test_the_graph_runs_its_planner_in_process_and_saves_unusable_replies(tiny_vlm, make_context, runs_dir):
    """--planner-backend transformers: the run's planner is the in-process model. A random-weight
    model cannot write a plan, so the run fails with every raw reply saved, and resuming it with a
    working planner endpoint finishes it."""
    import json
    from pathlib import Path

    from graph.runs.runner import resume_run, start_run

    context = make_context(
        planner_backend="transformers", planner_model=tiny_vlm, vlm_max_tokens=8, vlm_retries=1, vlm_retry_backoff_s=0
    )
    outcome = start_run("How do I fold a paper crane?", context, run_id="local-planner")
    assert outcome.status == "failed"
    assert "no usable plan in 2 tries" in str(outcome.error)
    saved = list((Path(runs_dir) / "local-planner").glob("planner-failures-*.json"))
    failures = json.loads(saved[0].read_text())
    # Each try is kept with why it failed; a random model's sampled reply may stop early (EOS)
    # or run to the 8-token budget.
    assert len(failures) == 2
    assert all(f["reason"] and f["finish_reason"] in ("length", "stop") for f in failures)

    finished = resume_run("local-planner", runs_dir, overrides={"planner_backend": "openai", "vlm_max_tokens": 4096})
    assert finished.status == "finished", repr(finished.error)


def test_concurrent_calls_share_one_batched_generate_and_match_one_by_one(tiny_vlm):
    """The batching queue in front of an in-process model: calls from several threads are
    answered by one batched generate, each with the reply it would get alone (greedy)."""
    from tools.llm.batcher import BatchingChatModel

    inner = greedy(tiny_vlm, max_new_tokens=6)
    batcher = BatchingChatModel(inner=inner, max_batch=4, gather_s=0.3)
    texts = [f"Original instruction: make the sky colour {n}" for n in range(4)]
    alone = [inner.invoke(critic_messages(text=t)).content for t in texts]
    replies = [None] * 4

    def ask(index):
        replies[index] = batcher.invoke(critic_messages(text=texts[index])).content

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == alone
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes) == 4


def test_a_bad_input_fails_only_its_own_caller(tiny_vlm):
    from tools.llm.batcher import BatchingChatModel

    batcher = BatchingChatModel(inner=greedy(tiny_vlm, max_new_tokens=4), max_batch=4, gather_s=0.3)
    results = {}

    def ask(name, messages):
        try:
            results[name] = batcher.invoke(messages).content
        except Exception as exc:  # noqa: BLE001
            results[name] = exc

    bad = [HumanMessage(content=[image_part("http://example.com/x.png")])]
    threads = [
        threading.Thread(target=ask, args=("good", critic_messages())),
        threading.Thread(target=ask, args=("bad", bad)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the bad request failed alone: the good one got the reply it gets when asked by itself
    assert results["good"] == greedy(tiny_vlm, max_new_tokens=4).invoke(critic_messages()).content
    assert isinstance(results["bad"], ValueError)
