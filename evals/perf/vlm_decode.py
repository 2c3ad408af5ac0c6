"""Prefill and decode speed of the in-process VLM backend (tools.llm.local) on a critic prompt.

Why: a trajectory makes dozens of critic calls of a few hundred tokens each, so decode speed
decides whether the in-process backend is usable and whether batching critic calls pays off.
This measures exactly what a node gets: ``TransformersChatModel.invoke/batch`` with two
1024x1024 PNG data-URL images plus ~1.5k text tokens, on a Qwen3-VL-8B-sized model with
random weights (the weights' values do not change the speed), built directly on the GPU in
bf16 and handed to the backend with ``register_vlm``.

Per batch size it times calls with 1 new token (prefill: image decode, preprocessing,
vision tower, language-model prefill; median of 3) and one with exactly ``--new-tokens`` new
tokens (EOS ignored via min_new_tokens); decode tokens/s = batch * (N - 1) / (t_N - t_1),
from the time spent inside ``generate``. Baseline,
measured in the same run: a plain greedy loop of model forward calls on a KV cache after
the same prefill (what ``generate`` costs on top of the model itself), the same loop with a
device-to-host copy of each step's token (the per-step synchronisation generate's stopping
checks impose), and the memory-bandwidth floor (weight bytes / HBM bandwidth).

The fast path (``tools.llm.fast_decode``: static KV cache, the decode step replayed as one CUDA
graph) is measured the same way through ``TransformersChatModel(fast_decode=True)``, and its
N-token replies are compared with generate's. Its variants are timed from the path's own
decode clock (capture excluded): graph with matmul attention (the default), graph with fused
attention (sdpa), and the same step run eagerly without a graph (what the graph saves).

Seen on one H200 (torch 2.11, transformers 5.17), tokens/s at batch 1 / 8: generate 13 / 116,
forward loop 38 / 244, fast path through the chat model 81 / 595 (with sdpa attention, graph
capture included), graph+matmul 103 / 702, graph+sdpa 85 / 644, eager+sdpa 34 / 289; the
bandwidth floor at batch 1 is ~274.

Assumed 8B shapes (Qwen3-VL-8B-Instruct's published config as far as known here): text
hidden 4096, 36 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 12288, vocab 151936,
rope theta 5e6, interleaved M-RoPE sections (24, 20, 20), untied embeddings; vision tower
depth 27, hidden 1152, intermediate 4304, 16 heads, 16-pixel patches merged 2x2 into 4096,
deepstack layers (8, 16, 24). The tokenizer is the tiny offline one (text tokens are counted
with it), so the prompt has the real token counts but not real words.

    python -m evals.perf.vlm_decode            # the 8B-sized model on CUDA
    python -m evals.perf.vlm_decode --tiny     # smoke test: tiny model on CPU
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time

EIGHT_B_TEXT = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=262144,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
)
EIGHT_B_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=4096,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],
)
EIGHT_B_VOCAB = 151936
HBM_BYTES_PER_S = 4.8e12  # H200 spec sheet


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evals.perf.vlm_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny random Qwen3-VL on CPU (a smoke test of this script)"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to measure (default: 1 8)")
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="new tokens per reply in the decode measurement (default: 128)"
    )
    parser.add_argument(
        "--text-tokens", type=int, default=1500, help="text tokens in the critic prompt (default: 1500)"
    )
    parser.add_argument(
        "--image-size", type=int, default=1024, help="side of the two square prompt images in pixels (default: 1024)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain forward-loop baseline")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast decode path (tools.llm.fast_decode)")
    return parser


def _png_data_url(seed: int, size: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _critic_messages(tokenizer, text_tokens: int, image_size: int):
    """Two images and about ``text_tokens`` tokens of critic-style text."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from tools.doubles.tiny_qwen3vl import _CORPUS

    ids: list[int] = []
    while len(ids) < text_tokens:
        ids += tokenizer.encode(_CORPUS, add_special_tokens=False)
    text = tokenizer.decode(ids[:text_tokens])
    return [
        SystemMessage("You judge one editing step of a visual plan."),
        HumanMessage(
            [
                {"type": "image_url", "image_url": {"url": _png_data_url(1, image_size)}},
                {"type": "image_url", "image_url": {"url": _png_data_url(2, image_size)}},
                {"type": "text", "text": text},
            ]
        ),
    ]


def _build_8b(processor, device: str):
    """A Qwen3-VL-8B-shaped model with random bf16 weights, created on ``device``."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from tools.doubles.tiny_qwen3vl import set_generation_defaults, tiny_config

    config = tiny_config(processor.tokenizer, vocab_size=EIGHT_B_VOCAB, text=EIGHT_B_TEXT, vision=EIGHT_B_VISION)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model = model.to(torch.bfloat16).eval()
    set_generation_defaults(model, processor.tokenizer)
    return model


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _forward_loop(chat, messages, batch: int, steps: int, sync: bool = False) -> float:
    """Seconds for ``steps`` greedy decode steps of plain forward calls on a KV cache after a
    prefill of the same batch (the model alone, without generate's machinery). With ``sync``
    each step copies its token to the host, as generate's end-of-sequence checks do, so the
    CPU cannot queue the next step's kernels while the GPU runs this one. The batch
    repeats one prompt, so nothing is padded and the decode steps need no attention mask
    (the model then derives the M-RoPE positions from the cache length)."""
    import torch

    loaded = chat.loaded
    model, processor = loaded.model, loaded.processor
    prompt = chat._prompt(messages)
    inputs = processor(text=[prompt.text] * batch, images=prompt.images * batch, padding=True, return_tensors="pt").to(
        model.device
    )
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with loaded.lock, torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        _sync(loaded.device)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            if sync:
                token.tolist()
        _sync(loaded.device)
        return time.perf_counter() - start


def _fast_variant(chat, messages, batch: int, new_tokens: int, **options) -> dict:
    """Decode tokens/s and capture seconds of one forced ``new_tokens`` reply per row through
    ``fast_generate`` with ``options`` (cuda_graph, attention), from its own clock."""
    import torch

    from tools.llm.fast_decode import fast_generate

    loaded = chat.loaded
    model, processor = loaded.model, loaded.processor
    prompt = chat._prompt(messages)
    inputs = processor(text=[prompt.text] * batch, images=prompt.images * batch, padding=True, return_tensors="pt").to(
        model.device
    )
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    stats: dict = {}
    with loaded.lock, torch.inference_mode():
        fast_generate(model, inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, stats=stats, **options)
    return {
        "tokens_per_s": round(batch * stats["steps"] / stats["decode_s"], 2),
        "capture_s": round(stats.get("capture_s", 0.0), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    import torch

    from tools.llm.local import TransformersChatModel, load_processor, register_vlm
    from tools.doubles.tiny_qwen3vl import save_tiny_qwen3vl

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(save_tiny_qwen3vl(f"{tmp}/tiny-qwen3vl"))
        if args.tiny:
            device, name, path = "cpu", "tiny random Qwen3-VL", folder
        else:
            if not torch.cuda.is_available():
                raise SystemExit("needs a CUDA GPU (or pass --tiny for a CPU smoke test)")
            device, name, path = "cuda", "random Qwen3-VL-8B-sized", "random-qwen3-vl-8b"
            processor = load_processor(folder)
            start = time.perf_counter()
            register_vlm(path, _build_8b(processor, device), processor, device=device, dtype="bfloat16")
            build_s = time.perf_counter() - start
        chat = TransformersChatModel(model_path=path, device=device, temperature=0.0, max_new_tokens=args.new_tokens)
        loaded = chat.loaded
        if args.tiny:
            build_s = loaded.load_s
        messages = _critic_messages(loaded.processor.tokenizer, args.text_tokens, args.image_size)

        fast_chat = chat.model_copy(update={"fast_decode": True})
        replies_of: dict[str, list[str]] = {}

        def timed(batch: int, new_tokens: int, model=chat) -> tuple[float, float, int]:
            """(end-to-end s, generate s, prompt tokens) of one batched call."""
            _sync(device)
            start = time.perf_counter()
            replies = model.batch([messages] * batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            _sync(device)
            total = time.perf_counter() - start
            assert all(r.usage_metadata["output_tokens"] == new_tokens for r in replies)
            replies_of["fast" if model.fast_decode else "generate"] = [r.content for r in replies]
            return total, replies[0].response_metadata["generate_s"], replies[0].usage_metadata["input_tokens"]

        params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        floor = HBM_BYTES_PER_S / params if device == "cuda" else None
        timed(1, 2)  # warm-up: kernels, allocator, lazy inits
        rows = []
        for batch in args.batch:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            timed(batch, 2)
            prefill = [timed(batch, 1) for _ in range(3)]
            total_1 = statistics.median(p[0] for p in prefill)
            gen_1 = statistics.median(p[1] for p in prefill)
            total_n, gen_n, prompt_tokens = timed(batch, args.new_tokens)
            decode_s = gen_n - gen_1
            steps = args.new_tokens - 1
            ok = decode_s > 0  # a loaded CPU can make the difference noise
            row = {
                "batch": batch,
                "prompt_tokens": prompt_tokens,
                "prefill_s": round(total_1, 4),
                "prefill_generate_s": round(gen_1, 4),
                "reply_s": round(total_n, 3),
                "decode_tokens_per_s": round(batch * steps / decode_s, 2) if ok else None,
                "decode_tokens_per_s_per_seq": round(steps / decode_s, 2) if ok else None,
            }
            if not args.no_fast:
                try:
                    timed(batch, 2, fast_chat)
                    fast_1 = statistics.median(timed(batch, 1, fast_chat)[1] for _ in range(3))
                    generate_replies = replies_of["generate"]
                    fast_n = timed(batch, args.new_tokens, fast_chat)[1]
                    fast_s = fast_n - fast_1
                    row["fast_tokens_per_s"] = round(batch * steps / fast_s, 2) if fast_s > 0 else None
                    row["fast_vs_generate"] = round(decode_s / fast_s, 2) if ok and fast_s > 0 else None
                    row["fast_same_replies"] = replies_of["fast"] == generate_replies
                    row["fast_variants"] = {
                        name: _fast_variant(chat, messages, batch, args.new_tokens, **options)
                        for name, options in (
                            ("graph+matmul", {"cuda_graph": True, "attention": "matmul"}),
                            ("graph+sdpa", {"cuda_graph": True, "attention": "sdpa"}),
                            ("eager+matmul", {"cuda_graph": False, "attention": "matmul"}),
                        )
                    }
                except Exception as exc:  # noqa: BLE001 - a failure here must not hide the rest
                    row["fast_error"] = f"{type(exc).__name__}: {exc}"[:300]
            if not args.no_baseline:
                try:
                    loop_s = _forward_loop(chat, messages, batch, steps)
                    row["forward_loop_tokens_per_s"] = round(batch * steps / loop_s, 2)
                    row["generate_vs_forward_loop"] = round(loop_s / decode_s, 3) if ok else None
                    synced_s = _forward_loop(chat, messages, batch, steps, sync=True)
                    row["synced_loop_tokens_per_s"] = round(batch * steps / synced_s, 2)
                except Exception as exc:  # noqa: BLE001 - a baseline failure must not hide the result
                    row["forward_loop_error"] = f"{type(exc).__name__}: {exc}"[:200]
            if device == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)  # survives a run cut short later

    result = {
        "bench": "vlm_decode",
        "model": name,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "dtype": loaded.dtype,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "params_gib": round(params / 2**30, 2),
        "build_or_load_s": round(build_s, 2),
        "image_size": args.image_size,
        "text_tokens": args.text_tokens,
        "new_tokens": args.new_tokens,
        "bandwidth_floor_tokens_per_s_batch1": round(floor, 1) if floor else None,
        "rows": rows,
    }
    _print_table(result)
    print(json.dumps(result))
    return result


def _print_table(result: dict) -> None:
    print(
        f"{result['model']} on {result['gpu'] or result['device']} ({result['dtype']}), "
        f"{result['params_gib']} GiB of weights, built/loaded in {result['build_or_load_s']} s; "
        f"two {result['image_size']}^2 images + {result['text_tokens']} text tokens, "
        f"{result['new_tokens']} new tokens"
    )
    header = (
        "batch",
        "prompt tok",
        "prefill s",
        "gen-only s",
        "reply s",
        "decode tok/s",
        "per seq",
        "fwd-loop tok/s",
        "gen/loop",
        "synced tok/s",
        "fast tok/s",
        "fast/gen",
        "same reply",
        "peak GiB",
    )
    print(" | ".join(f"{h:>12}" for h in header))
    for row in result["rows"]:
        cells = (
            row["batch"],
            row["prompt_tokens"],
            row["prefill_s"],
            row["prefill_generate_s"],
            row["reply_s"],
            row["decode_tokens_per_s"],
            row["decode_tokens_per_s_per_seq"],
            row.get("forward_loop_tokens_per_s", "-"),
            row.get("generate_vs_forward_loop", "-"),
            row.get("synced_loop_tokens_per_s", "-"),
            row.get("fast_tokens_per_s", "-"),
            row.get("fast_vs_generate", "-"),
            row.get("fast_same_replies", "-"),
            row.get("peak_gib", "-"),
        )
        print(" | ".join(f"{c!s:>12}" for c in cells))
    for row in result["rows"]:
        for name, variant in row.get("fast_variants", {}).items():
            print(
                f"fast path at batch {row['batch']}, {name}: {variant['tokens_per_s']} tokens/s "
                f"(graph capture {variant['capture_s']} s)"
            )
    if result["bandwidth_floor_tokens_per_s_batch1"]:
        print(
            f"memory-bandwidth floor at batch 1: ~{result['bandwidth_floor_tokens_per_s_batch1']} "
            f"tokens/s (weights / {HBM_BYTES_PER_S / 1e12} TB/s)"
        )
    for row in result["rows"]:
        if "forward_loop_error" in row:
            print(f"baseline failed at batch {row['batch']}: {row['forward_loop_error']}")
        if "fast_error" in row:
            print(f"fast path failed at batch {row['batch']}: {row['fast_error']}")


if __name__ == "__main__":
    main()
