"""The fast decode path on a CUDA GPU in bf16 with CUDA-graph capture (run on the GPU machine:
pytest -m gpu -s tests/gpu/test_fast_decode_cuda.py).

Greedy tokens are compared with transformers' generate on the tiny random Qwen3-VL; the
graph-replayed step must equal the same step run eagerly bit for bit. Tokens/s of both paths
are printed (the tiny model measures launch overhead, not bandwidth; evals.perf.vlm_decode
measures the 8B-sized model). Fixtures live here so the file also runs with ``--noconftest``.

Why only a prefix must agree with generate in bf16: both paths do the same arithmetic, but
their attention kernels differ (generate repeats the KV heads and attends over a cache that
grows by one key per step; the fast path folds a KV head's four query heads into one call over
a fixed-size cache), so bf16 results differ in the last bits, and once a random model meets a
near-tie the two continuations part. Seen on an H200 (transformers 5.17, torch 2.11): a
two-image prompt agreed on 48/48 tokens; in a left-padded batch of three the rows agreed on
48, 27 and 26 tokens. In float32 on CPU (tests/integration/test_fast_decode.py) the tokens are
equal exactly, and the graph-versus-eager test below is exact.
"""

from __future__ import annotations

import time

import pytest
import torch

from vlm_inputs import critic_messages  # noqa: E402  (beside this file)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)

#: New tokens each row must share with generate's greedy reply in bf16 (see the docstring).
AGREE = 16


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from tools.llm.local import TransformersChatModel
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    path = str(save_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl"))
    model = TransformersChatModel(model_path=path, device="cuda", temperature=0.0, max_new_tokens=48)
    assert model.loaded.model.dtype == torch.bfloat16
    return model


def batch_messages():
    from langchain_core.messages import HumanMessage

    return [
        critic_messages(1, 2),
        [HumanMessage("Plan a visual story about a fox.")],
        critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center of the lake"),
    ]


def encode(chat, conversations):
    prompts = [chat._prompt(messages) for messages in conversations]
    images = [image for prompt in prompts for image in prompt.images]
    inputs = chat.loaded.processor(
        text=[p.text for p in prompts], images=images or None, padding=True, return_tensors="pt"
    ).to("cuda")
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    return inputs


def agreeing(reference, fast, prompt_len: int) -> list[int]:
    """Per row: how many new tokens agree before the first difference."""
    counts = []
    for ref_row, fast_row in zip(reference[:, prompt_len:].tolist(), fast[:, prompt_len:].tolist()):
        counts.append(
            next((i for i, (a, b) in enumerate(zip(ref_row, fast_row)) if a != b), min(len(ref_row), len(fast_row)))
        )
    return counts


def agreement(reference, fast, prompt_len: int) -> str:
    total = max(reference.shape[1], fast.shape[1]) - prompt_len
    return " ".join(f"{n}/{total}" for n in agreeing(reference, fast, prompt_len))


@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
@pytest.mark.parametrize("conversations", ["two images", "batch of 3"])
def test_greedy_tokens_agree_with_generate_in_bf16_with_graphs(chat, conversations, attention):
    from tools.llm.fast_decode import fast_generate

    inputs = encode(chat, [critic_messages(1, 2)] if conversations == "two images" else batch_messages())
    model = chat.loaded.model
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=48, **GREEDY)
        stats: dict = {}
        fast = fast_generate(
            model, inputs, max_new_tokens=48, cuda_graph=True, attention=attention, stats=stats, **GREEDY
        )
    prompt_len = inputs["input_ids"].shape[1]
    print(
        f"\n[{conversations}, {attention}] new tokens agreeing with generate per row: "
        f"{agreement(reference, fast, prompt_len)}; capture {stats.get('capture_s', 0):.3f} s"
    )
    assert "capture_s" in stats  # the graph was captured and replayed
    rows = agreeing(reference, fast, prompt_len)
    if attention == "matmul" and conversations == "batch of 3":
        # Measured on the H200: the unpadded row agrees fully; left-padded rows part from generate
        # after 13-18 tokens in bf16 (26-27 with sdpa; exact in float32 on CPU). That is why sdpa
        # is the default; here only the unpadded row is held to full agreement.
        assert rows[0] == 48, rows
    else:
        assert min(rows) >= AGREE, rows


def test_graph_replay_equals_eager_steps_bit_for_bit(chat):
    from tools.llm.fast_decode import fast_generate

    inputs = encode(chat, batch_messages())
    model = chat.loaded.model
    with torch.inference_mode():
        for attention in ("sdpa", "matmul"):
            eager = fast_generate(model, inputs, max_new_tokens=40, cuda_graph=False, attention=attention, **GREEDY)
            graph = fast_generate(model, inputs, max_new_tokens=40, cuda_graph=True, attention=attention, **GREEDY)
            assert torch.equal(eager, graph), attention
        sampled = []
        for _ in range(2):
            torch.manual_seed(11)
            sampled.append(
                fast_generate(model, inputs, max_new_tokens=40, do_sample=True, temperature=1.0, top_k=50, top_p=0.95)
            )
    assert torch.equal(sampled[0], sampled[1])


def test_eos_and_length_stops_on_cuda(chat, monkeypatch):
    from tools.llm.fast_decode import fast_generate

    inputs = encode(chat, batch_messages())
    model = chat.loaded.model
    prompt_len = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        free = fast_generate(model, inputs, max_new_tokens=24, **GREEDY)
        settings = model.generation_config
        monkeypatch.setattr(settings, "eos_token_id", [*settings.eos_token_id, free[0, prompt_len + 4].item()])
        reference = model.generate(**inputs, max_new_tokens=24, **GREEDY)
        fast = fast_generate(model, inputs, max_new_tokens=24, **GREEDY)
    print(f"\n[eos] agreement: {agreement(reference, fast, prompt_len)}")
    assert fast.shape == reference.shape  # every row stopped where generate's did
    assert min(agreeing(reference, fast, prompt_len)) >= AGREE

    fast_chat = chat.model_copy(update={"fast_decode": True})
    replies = fast_chat.batch(batch_messages(), max_new_tokens=5)
    assert [r.content for r in replies] == [r.content for r in chat.batch(batch_messages(), max_new_tokens=5)]
    assert replies[1].response_metadata["finish_reason"] == "length"


def test_tokens_per_second_printed(chat):
    """Forced 128-token replies at batch 1 and 8: generate against the fast path."""
    from langchain_core.messages import HumanMessage

    from tools.llm.fast_decode import fast_generate

    model = chat.loaded.model
    lines = []
    for batch in (1, 8):
        inputs = encode(chat, [[HumanMessage("Plan a visual story about a fox.")]] * batch)
        speeds = {}
        for name in ("generate", "fast"):

            def run(new: int):
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.inference_mode():
                    if name == "generate":
                        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, **GREEDY)
                    else:
                        out = fast_generate(model, inputs, max_new_tokens=new, min_new_tokens=new, **GREEDY)
                torch.cuda.synchronize()
                assert out.shape[1] == inputs["input_ids"].shape[1] + new
                return time.perf_counter() - start

            run(8)  # warm-up
            one = min(run(1) for _ in range(3))
            speeds[name] = batch * 127 / (run(128) - one)
        lines.append(
            f"batch {batch}: generate {speeds['generate']:.0f} tok/s, fast {speeds['fast']:.0f} tok/s "
            f"({speeds['fast'] / speeds['generate']:.1f}x)"
        )
        assert speeds["fast"] > speeds["generate"]
    print("\n[tiny model, bf16] " + "; ".join(lines))
