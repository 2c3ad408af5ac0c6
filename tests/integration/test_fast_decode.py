"""The fast decode path (tools.llm.fast_decode) against transformers' generate on the tiny random
Qwen3-VL (CPU, float32): same greedy tokens for images, left-padded batches, length and EOS
stops; reproducible sampling; the chat model's ``fast_decode`` switch gives the same replies."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import HumanMessage

from tests.integration.test_local_vlm import critic_messages
from tools.llm.fast_decode import fast_generate
from tools.llm.local import TransformersChatModel

GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@pytest.fixture(scope="module")
def chat(tiny_vlm) -> TransformersChatModel:
    return TransformersChatModel(model_path=tiny_vlm, device="cpu", temperature=0.0, max_new_tokens=24)


def encode(chat: TransformersChatModel, conversations: list) -> dict:
    """The processor's left-padded batch for ``conversations``, as the chat model builds it."""
    prompts = [chat._prompt(messages) for messages in conversations]
    images = [image for prompt in prompts for image in prompt.images]
    return chat.loaded.processor(
        text=[prompt.text for prompt in prompts], images=images or None, padding=True, return_tensors="pt"
    )


def both(chat: TransformersChatModel, inputs: dict, **options):
    """(generate's sequences, the fast path's sequences) for the same inputs and options."""
    model = chat.loaded.model
    with torch.inference_mode():
        return model.generate(**inputs, **options), fast_generate(model, inputs, **options)


BATCH = [
    critic_messages(1, 2),
    [HumanMessage("Plan a visual story about a small cat in four steps.")],
    critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center of the calm sea"),
]


def test_one_prompt_with_two_images_gives_generates_greedy_tokens(chat):
    inputs = encode(chat, [critic_messages(1, 2)])
    assert inputs["image_grid_thw"].shape[0] == 2

    reference, fast = both(chat, inputs, max_new_tokens=32, **GREEDY)
    assert fast.shape == reference.shape == (1, inputs["input_ids"].shape[1] + 32)
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_left_padded_batch_gives_generates_greedy_tokens(chat, attention):
    inputs = encode(chat, BATCH)
    assert len(set(inputs["attention_mask"].sum(dim=1).tolist())) == 3  # three prompt lengths

    model = chat.loaded.model
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=24, **GREEDY)
        fast = fast_generate(model, inputs, max_new_tokens=24, attention=attention, **GREEDY)
    assert torch.equal(fast, reference)
    assert len({tuple(row) for row in fast[:, -24:].tolist()}) == 3


def end_on(chat, monkeypatch, token: int) -> None:
    """Make ``token`` an end-of-sequence id of the shared tiny model for this test."""
    settings = chat.loaded.model.generation_config
    monkeypatch.setattr(settings, "eos_token_id", [*settings.eos_token_id, token])


def test_eos_stops_rows_and_pads_them_like_generate(chat, monkeypatch):
    inputs = encode(chat, BATCH)
    _, free = both(chat, inputs, max_new_tokens=24, **GREEDY)
    prompt_len = inputs["input_ids"].shape[1]
    end_on(chat, monkeypatch, free[0, prompt_len + 4].item())  # row 0 ends at its 5th token

    reference, fast = both(chat, inputs, max_new_tokens=24, **GREEDY)
    assert torch.equal(fast, reference)
    with torch.inference_mode():  # checking for the end on the host after every token changes nothing
        every_token = fast_generate(chat.loaded.model, inputs, max_new_tokens=24, check_every=1, **GREEDY)
    assert torch.equal(every_token, reference)
    pad = chat.loaded.model.generation_config.pad_token_id
    assert fast[0, prompt_len + 5 :].eq(pad).all()  # the row that ended is padded


def test_min_new_tokens_holds_back_the_end_like_generate(chat, monkeypatch):
    inputs = encode(chat, [critic_messages(1, 2)])
    _, free = both(chat, inputs, max_new_tokens=16, **GREEDY)
    end_on(chat, monkeypatch, free[0, inputs["input_ids"].shape[1] + 2].item())

    reference, fast = both(chat, inputs, max_new_tokens=16, min_new_tokens=8, **GREEDY)
    assert torch.equal(fast, reference)


def test_repetition_penalty_of_the_checkpoint_is_applied_like_generate(chat, monkeypatch):
    monkeypatch.setattr(chat.loaded.model.generation_config, "repetition_penalty", 1.5)
    reference, fast = both(chat, encode(chat, BATCH), max_new_tokens=16, **GREEDY)
    assert torch.equal(fast, reference)


def test_chat_model_replies_and_finish_reasons_match_generate(chat, monkeypatch):
    fast_chat = chat.model_copy(update={"fast_decode": True})
    short = [chat.invoke(critic_messages(), max_new_tokens=3), fast_chat.invoke(critic_messages(), max_new_tokens=3)]
    assert [r.response_metadata["finish_reason"] for r in short] == ["length", "length"]
    assert short[0].content == short[1].content
    assert short[0].usage_metadata == short[1].usage_metadata

    inputs = encode(chat, [critic_messages()])
    _, free = both(chat, inputs, max_new_tokens=24, **GREEDY)
    end_on(chat, monkeypatch, free[0, inputs["input_ids"].shape[1] + 3].item())
    stopped = [chat.invoke(critic_messages()), fast_chat.invoke(critic_messages())]
    assert [r.response_metadata["finish_reason"] for r in stopped] == ["stop", "stop"]
    assert stopped[0].content == stopped[1].content
    assert stopped[0].usage_metadata == stopped[1].usage_metadata
    assert stopped[0].usage_metadata["output_tokens"] < 24

    replies = fast_chat.batch(BATCH)
    assert [r.content for r in replies] == [r.content for r in chat.batch(BATCH)]


def test_stop_strings_cut_the_reply_like_generate(chat):
    full = chat.invoke(critic_messages()).content
    marker = full[len(full) // 2 : len(full) // 2 + 2]
    fast_chat = chat.model_copy(update={"fast_decode": True})

    reply = fast_chat.invoke(critic_messages(), stop=[marker])
    assert reply.content == chat.invoke(critic_messages(), stop=[marker]).content == full.split(marker, 1)[0]
    assert reply.response_metadata["finish_reason"] == "stop"


def test_sampling_with_a_seed_is_reproducible(chat, tiny_vlm):
    def sampler(seed: int) -> TransformersChatModel:
        return TransformersChatModel(
            model_path=tiny_vlm, device="cpu", temperature=0.9, seed=seed, max_new_tokens=24, fast_decode=True
        )

    first = [r.content for r in sampler(7).batch(BATCH)]
    assert [r.content for r in sampler(7).batch(BATCH)] == first
    assert [r.content for r in sampler(8).batch(BATCH)] != first

    inputs = encode(chat, BATCH)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        with torch.inference_mode():
            runs.append(
                fast_generate(
                    chat.loaded.model, inputs, max_new_tokens=16, do_sample=True, temperature=1.2, top_k=40, top_p=0.9
                )
            )
    assert torch.equal(runs[0], runs[1])


def test_other_models_are_refused_with_the_fix(chat):
    class NotQwen3VL:
        config = type("Config", (), {"model_type": "llava"})()

    with pytest.raises(ValueError, match="fast_decode=False"):
        fast_generate(NotQwen3VL(), encode(chat, BATCH), max_new_tokens=4)
