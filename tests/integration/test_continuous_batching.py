"""Continuous batching (tools.llm.continuous) on the tiny random Qwen3-VL, CPU, float32: requests
that join a running batch, rows that leave as soon as they end, and every reply equal to running
its request alone with transformers' generate."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from langchain_core.messages import HumanMessage

from tests.integration.test_local_vlm import critic_messages
from tools.llm.batcher import BatchingChatModel
from tools.llm.continuous import ContinuousEngine
from tools.llm.local import TransformersChatModel

GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)

CONVERSATIONS = [
    critic_messages(1, 2),
    [HumanMessage("Plan a visual story about a small cat in four steps.")],
    critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center of the calm sea"),
    [HumanMessage("Two words.")],
    critic_messages(5, 6, text="Original instruction: add a red kite"),
]


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> TransformersChatModel:
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    path = str(save_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl"))
    return TransformersChatModel(model_path=path, device="cpu", temperature=0.0, max_new_tokens=24)


def one_prompt(chat: TransformersChatModel, messages) -> dict:
    prompt = chat._prompt(messages)
    return chat.loaded.processor(text=[prompt.text], images=prompt.images or None, return_tensors="pt")


def alone(chat: TransformersChatModel, messages, max_new_tokens: int) -> list[int]:
    """generate's greedy tokens for one prompt, run by itself, cut after its end token."""
    inputs = one_prompt(chat, messages)
    with torch.inference_mode():
        sequences = chat.loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, **GREEDY)
    row = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    eos = chat.loaded.model.generation_config.eos_token_id
    end = next((i + 1 for i, token in enumerate(row) if token in eos), None)
    return row if end is None else row[:end]


def engine(chat: TransformersChatModel, **settings) -> ContinuousEngine:
    return ContinuousEngine(chat.loaded.model, chat.loaded.processor.tokenizer, **settings)


@pytest.mark.parametrize("beside", [False, True], ids=["prefill-between-rounds", "prefill-beside-decode"])
def test_more_requests_than_slots_each_equal_generate_alone(chat, beside):
    lengths = [30, 7, 19, 3, 12]  # different reply budgets: rows leave at different steps
    served = engine(chat, max_batch=2, check_every=4, prefill_beside_decode=beside)
    futures = [
        served.submit(one_prompt(chat, messages), max_new_tokens=n) for messages, n in zip(CONVERSATIONS, lengths)
    ]
    done = [future.result(timeout=120) for future in futures]

    for messages, n, completion in zip(CONVERSATIONS, lengths, done):
        assert completion.tokens == alone(chat, messages, n)
        assert completion.finish == "length" and len(completion.tokens) == n
    assert max(max(c.batch_sizes) for c in done) == 2  # never more rows than slots
    # the short request left its slot at once and a waiting one took it while the long one ran
    assert done[0].batch_sizes.count(2) > 1
    assert served.slots == 2


def test_a_newcomer_joins_the_running_batch_and_leaves_first(chat):
    served = engine(chat, max_batch=4, check_every=2)
    long = served.submit(one_prompt(chat, CONVERSATIONS[0]), max_new_tokens=160)
    deadline = time.monotonic() + 60
    while served.steps == 0 and time.monotonic() < deadline:  # the long one is decoding
        time.sleep(0.001)
    short = served.submit(one_prompt(chat, CONVERSATIONS[2]), max_new_tokens=6)

    short_done = short.result(timeout=120)
    assert not long.done()  # answered while the long request still decodes
    long_done = long.result(timeout=120)
    sizes = long_done.batch_sizes
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1  # alone, joined, alone again
    assert short_done.tokens == alone(chat, CONVERSATIONS[2], 6)
    assert long_done.tokens == alone(chat, CONVERSATIONS[0], 160)


def test_with_the_prefill_thread_running_rows_keep_decoding_while_a_newcomer_is_prefilled(chat):
    served = engine(chat, max_batch=4, check_every=2, prefill_beside_decode=True)
    long = served.submit(one_prompt(chat, CONVERSATIONS[0]), max_new_tokens=400)
    deadline = time.monotonic() + 60
    while served.steps == 0 and time.monotonic() < deadline:  # the long one is decoding
        time.sleep(0.001)
    steps_during_prefill = []

    def slow_vision(module, args):  # the newcomer's image encoder waits for decode to go on
        entered = served.steps
        until = time.monotonic() + 30
        while served.steps < entered + 6 and time.monotonic() < until and not long.done():
            time.sleep(0.001)
        steps_during_prefill.append(served.steps - entered)

    hook = chat.loaded.model.model.visual.register_forward_pre_hook(slow_vision)
    try:
        newcomer = served.submit(one_prompt(chat, CONVERSATIONS[2]), max_new_tokens=6)
        newcomer_done = newcomer.result(timeout=120)
    finally:
        hook.remove()
    assert steps_during_prefill and steps_during_prefill[0] >= 6  # decode did not wait for it
    assert newcomer_done.tokens == alone(chat, CONVERSATIONS[2], 6)
    assert long.result(timeout=120).tokens == alone(chat, CONVERSATIONS[0], 400)


@pytest.mark.parametrize("beside", [False, True], ids=["prefill-between-rounds", "prefill-beside-decode"])
def test_a_prompt_the_model_refuses_fails_alone(chat, beside):
    served = engine(chat, max_batch=4, prefill_beside_decode=beside)
    broken = one_prompt(chat, CONVERSATIONS[0])
    broken["pixel_values"] = broken["pixel_values"][: broken["pixel_values"].shape[0] // 2]  # half an image
    good = served.submit(one_prompt(chat, CONVERSATIONS[2]), max_new_tokens=8)
    bad = served.submit(broken, max_new_tokens=8)
    with pytest.raises(RuntimeError, match="size"):
        bad.result(timeout=60)
    assert good.result(timeout=60).tokens == alone(chat, CONVERSATIONS[2], 8)
    after = served.submit(one_prompt(chat, CONVERSATIONS[1]), max_new_tokens=8)  # the engine goes on
    assert after.result(timeout=60).tokens == alone(chat, CONVERSATIONS[1], 8)


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(chat):
    options = dict(max_new_tokens=20, do_sample=True, temperature=1.3)
    by_itself = (
        engine(chat, max_batch=1).submit(one_prompt(chat, CONVERSATIONS[1]), seed=11, **options).result(timeout=60)
    )
    crowded = engine(chat, max_batch=4)
    others = [crowded.submit(one_prompt(chat, m), max_new_tokens=20) for m in CONVERSATIONS[2:]]
    mine = crowded.submit(one_prompt(chat, CONVERSATIONS[1]), seed=11, **options)
    other = crowded.submit(one_prompt(chat, CONVERSATIONS[1]), seed=12, **options)
    assert mine.result(timeout=60).tokens == by_itself.tokens
    assert other.result(timeout=60).tokens != by_itself.tokens
    for future, messages in zip(others, CONVERSATIONS[2:]):  # greedy rows beside sampled ones
        assert future.result(timeout=60).tokens == alone(chat, messages, 20)


def test_a_request_longer_than_the_buffers_waits_for_them_to_grow(chat):
    served = engine(chat, max_batch=2, context=64)
    short = served.submit(one_prompt(chat, CONVERSATIONS[3]), max_new_tokens=4)
    longer = served.submit(one_prompt(chat, CONVERSATIONS[0]), max_new_tokens=40)
    assert short.result(timeout=60).tokens == alone(chat, CONVERSATIONS[3], 4)
    assert longer.result(timeout=60).tokens == alone(chat, CONVERSATIONS[0], 40)
    assert served.context > 64


def test_concurrent_callers_through_the_batcher_get_their_own_replies(chat):
    fast = chat.model_copy(update={"fast_decode": True})
    batcher = BatchingChatModel(inner=fast, max_batch=3)
    expected = [r.content for r in chat.batch(CONVERSATIONS)]
    replies: dict[int, str] = {}

    def ask(index: int) -> None:
        replies[index] = batcher.invoke(CONVERSATIONS[index]).content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(CONVERSATIONS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [replies[i] for i in range(len(CONVERSATIONS))] == expected
    assert batcher.inner.max_batch == 3  # the engine's slots come from the batcher's setting
    assert batcher.batch_sizes == []  # no queue of its own: calls went straight to the engine


def test_an_unsupported_model_is_refused_with_the_fix(chat):
    class NotQwen3VL:
        config = type("Config", (), {"model_type": "llava"})()

    with pytest.raises(ValueError, match="fast_decode=False"):
        ContinuousEngine(NotQwen3VL())
