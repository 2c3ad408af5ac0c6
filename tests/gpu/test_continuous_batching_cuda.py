"""Continuous batching (tools.llm.continuous) on a CUDA GPU in bf16, with the step replayed from
CUDA graphs on the engine's own stream (run on the GPU machine:
pytest -m gpu -s --noconftest tests/gpu/test_continuous_batching_cuda.py).

Requests join and leave a running batch of at most two rows; each reply is compared with
transformers' generate on that request alone, and the agreement is printed. In bf16 only a
prefix must agree (see test_fast_decode_cuda.py's docstring: the batch size and the attention
kernels change the last bits, and a random model's near-ties then part the continuations); in
float32 on CPU (tests/integration/test_continuous_batching.py) the replies are equal exactly.
The graph-replayed engine must equal the same engine run eagerly bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from vlm_inputs import critic_messages  # noqa: E402  (beside this file)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
AGREE = 16  # as test_fast_decode_cuda.py
NEW = 48


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl
    from tools.llm.local import TransformersChatModel

    path = str(save_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl"))
    model = TransformersChatModel(model_path=path, device="cuda", temperature=0.0, max_new_tokens=NEW)
    assert model.loaded.model.dtype == torch.bfloat16
    return model


def conversations():
    from langchain_core.messages import HumanMessage

    return [
        critic_messages(1, 2),
        [HumanMessage("Plan a visual story about a fox.")],
        critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center of the lake"),
        [HumanMessage("Two words.")],
    ]


def one_prompt(chat, messages):
    prompt = chat._prompt(messages)
    return chat.loaded.processor(text=[prompt.text], images=prompt.images or None, return_tensors="pt")


def alone(chat, messages, new: int) -> list[int]:
    inputs = one_prompt(chat, messages).to("cuda")
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.inference_mode():
        out = chat.loaded.model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, **GREEDY)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def serve(chat, lengths, **settings):
    from tools.llm.continuous import ContinuousEngine

    engine = ContinuousEngine(
        chat.loaded.model, chat.loaded.processor.tokenizer, max_batch=2, check_every=4, **settings
    )
    futures = [
        engine.submit(one_prompt(chat, m), max_new_tokens=n, min_new_tokens=n) for m, n in zip(conversations(), lengths)
    ]
    done = [f.result(timeout=300) for f in futures]
    graphs = len(engine.graphs)
    engine.close()
    return done, graphs


def test_joins_and_leaves_agree_with_generate_alone(chat):
    lengths = [NEW, 20, NEW, 8]
    done, graphs = serve(chat, lengths)
    agree = []
    for messages, n, completion in zip(conversations(), lengths, done):
        reference = alone(chat, messages, n)
        assert len(completion.tokens) == n
        agree.append(next((i for i, (a, b) in enumerate(zip(reference, completion.tokens)) if a != b), n))
    print(
        f"\ncontinuous batching (2 slots, 4 requests) vs generate alone, bf16: agreeing tokens "
        f"{' '.join(f'{a}/{n}' for a, n in zip(agree, lengths))}; "
        f"rows per round {[c.batch_sizes for c in done]}; graphs {graphs}"
    )
    assert max(max(c.batch_sizes) for c in done) == 2
    assert all(a >= min(AGREE, n) for a, n in zip(agree, lengths))


def test_graph_replay_equals_the_eager_engine(chat):
    lengths = [NEW, 20, NEW, 8]
    graphed, graphs = serve(chat, lengths)
    eager, _ = serve(chat, lengths, cuda_graph=False)
    assert graphs  # the step really was replayed from graphs
    assert [c.tokens for c in graphed] == [c.tokens for c in eager]


def test_an_engine_on_the_default_stream_replays_graphs_too(chat):
    """own_stream=False puts the engine on the stream the generator uses; CUDA cannot capture
    graphs there, so the capture moves to a side stream (found on the H200, 2026-12-03:
    the benchmark's --same-stream-levels failed with "must be captured on a non-default
    stream")."""
    lengths = [NEW, 20, NEW, 8]
    shared, graphs = serve(chat, lengths, own_stream=False)
    own, _ = serve(chat, lengths)
    assert graphs
    assert [c.tokens for c in shared] == [c.tokens for c in own]


def test_slots_follow_free_memory(chat):
    from tools.llm.continuous import capacity, kv_bytes_per_token

    model = chat.loaded.model
    free, _ = torch.cuda.mem_get_info()
    per_slot = kv_bytes_per_token(model) * 4096
    assert abs(capacity(model, 4096, 10**6, reserve_bytes=0) - free // per_slot) <= 1
    assert capacity(model, 4096, 32, reserve_bytes=0) == 32
    with pytest.raises(RuntimeError, match="vlm_max_tokens"):
        capacity(model, 4096, 32, reserve_bytes=free)
