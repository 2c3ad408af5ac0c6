"""The in-process planner/critic backend on a CUDA GPU in bf16 (run on the GPU machine:
pytest -m gpu tests/gpu/test_local_vlm_cuda.py).

Loads the tiny random Qwen3-VL by path through ``tools.llm.local``, as a real checkpoint.
Fixtures live here so the file also runs with ``--noconftest``.
"""

from __future__ import annotations


import pytest
import torch

from vlm_inputs import critic_messages  # noqa: E402  (beside this file)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def greedy(path: str, max_new_tokens: int = 16):
    from tools.llm.local import TransformersChatModel

    return TransformersChatModel(model_path=path, device="cuda", temperature=0.0, max_new_tokens=max_new_tokens)


def test_loads_in_bf16_on_cuda_and_answers(tiny_vlm):
    model = greedy(tiny_vlm)
    loaded = model.loaded
    assert loaded.model.dtype == torch.bfloat16 and loaded.model.device.type == "cuda"

    reply = model.invoke(critic_messages(1, 2))
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["input_tokens"] > 0


def test_batch_equals_one_by_one_greedy_on_cuda(tiny_vlm):
    from langchain_core.messages import HumanMessage

    model = greedy(tiny_vlm)
    inputs = [
        critic_messages(1, 2),
        [HumanMessage("Plan a visual story about a fox.")],
        critic_messages(3, 4, text="Rewritten prompt: keep the boat in the center of the lake"),
    ]
    one_by_one = [model.invoke(messages).content for messages in inputs]
    assert [reply.content for reply in model.batch(inputs)] == one_by_one


@pytest.mark.parametrize("max_new_tokens", [1, 5, 24])
def test_reply_length_and_finish_reason_on_cuda(tiny_vlm, max_new_tokens):
    reply = greedy(tiny_vlm, max_new_tokens).invoke(critic_messages(5, 6))
    used = reply.usage_metadata["output_tokens"]
    assert 1 <= used <= max_new_tokens
    finish = reply.response_metadata["finish_reason"]
    assert finish == "stop" or (finish == "length" and used == max_new_tokens)
