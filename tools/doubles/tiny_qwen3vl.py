"""A tiny, random-weight Qwen3-VL saved as a normal model folder, built fully offline.

Why this exists
---------------
The planner and critic can run in-process through ``tools.llm.local``, which loads a
Qwen3-VL checkpoint with ``AutoModelForImageTextToText.from_pretrained(folder)``.  The real
8B checkpoint lives on the Hugging Face Hub, which tests cannot reach, and is far too big
for CPU tests.  This module writes a stand-in folder holding the very same classes
(``Qwen3VLForConditionalGeneration`` with its vision tower and deepstack merger, a Qwen2
tokenizer carrying the Qwen special tokens and a chat template, and the Qwen2-VL image
processor with Qwen3-VL's 16-pixel patches), only with a handful of random weights.  The
backend then loads it through exactly the code path it uses for real weights, so tests
exercise chat templating, image placeholder expansion, multimodal RoPE, left-padded
batching and ``generate``.  Its replies are gibberish, but they depend on the prompt and
the images and are deterministic under greedy decoding.

Nothing is downloaded: the tokenizer is a small byte-level BPE trained in memory, and the
weights come from ``torch`` with a fixed seed.

Layout of the folder (like a real checkpoint, minus the video processor, whose class needs
torchvision): ``config.json``, ``generation_config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, chat template, ``preprocessor_config.json``.
It is about 0.6 MB and loads in well under a second on CPU.

Usage::

    path = save_tiny_qwen3vl("/tmp/tiny-qwen3vl")
    chat = TransformersChatModel(model_path=str(path), max_new_tokens=32)
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import uuid

from tools.doubles.model_folders import publish_folder

# Qwen2's pre-tokenisation regex, shared with the tiny klein text encoder's tokenizer.
from tools.doubles.tiny_klein import _QWEN_PRETOKENIZE_REGEX

__all__ = ["SPECIAL_TOKENS", "build_tiny_qwen3vl", "build_tokenizer", "save_tiny_qwen3vl", "tiny_image_processor"]

logger = logging.getLogger(__name__)

#: Target vocabulary of the in-memory BPE (256 byte symbols + special tokens + merges).
BPE_VOCAB_SIZE = 512

#: Qwen's special tokens that the chat template and the image placeholders rely on.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


# A compact ChatML template in the shape of Qwen3-VL's: message content is either a string
# or a list of parts; an image part becomes one <|image_pad|> between vision markers, which
# the processor then repeats once per merged image patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Training text for the BPE: words the planner and critic prompts and replies use.
_CORPUS = """\
You are the critic. Compare the image before the edit with the image after the edit.
Original instruction: make the sky orange at sunset and add birds over the calm sea.
Rewritten prompt: keep the boat in the center and preserve the colors of the houses.
<think>The after image shows the change but the hand has six fingers.</think>
<answer>{"previous_step_success": false, "refine_prompt": "a red bicycle by a brick wall"}</answer>
<answer>{"execution_plan": [{"step_number": 1, "step_name": "Fold the paper", "instruction": null}]}</answer>
Plan a visual story in four steps: a small cat sleeps on a blue chair next to the window.
Step one: mix the flour and water. Step two: knead the dough for ten minutes.
Draw a cozy kitchen with a wooden table, a bowl of green apples and a teapot.
Replace the background with a forest of tall pine trees and soft morning fog.
"""

# Model sizes: small enough for a sub-megabyte folder, big enough to exercise every path
# (grouped-query attention, interleaved multimodal RoPE, a deepstack layer, patch merging).
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=32768,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    },
)
_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=64,
    num_position_embeddings=64,
    deepstack_visual_indexes=[1],
)

#: Init scale of the linear and embedding weights (see ``_widen_init``).
WEIGHT_GAIN = 2.0

# Files whose presence marks a finished save (the folder is renamed into place atomically).
_REQUIRED = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)


def build_tokenizer():
    """A byte-level BPE trained in memory on ``_CORPUS``, wrapped as a Qwen2 tokenizer with
    the Qwen special tokens (ids 0-7) and ``CHAT_TEMPLATE``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=262144,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_image_processor():
    """Qwen3-VL's image preprocessing (16-pixel patches merged 2x2, mean/std 0.5, the real
    upper bound of 16M pixels) but a small lower bound, so that small test images stay small:
    a 64x64 image becomes 4 image tokens, a 1024x1024 one 1024, as with the real model."""
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil_module

    return pil_module.Qwen2VLImageProcessorPil(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32, "longest_edge": 16_777_216},
    )


def tiny_config(tokenizer, vocab_size: int | None = None, text: dict | None = None, vision: dict | None = None):
    """A ``Qwen3VLConfig`` whose special-token ids match ``tokenizer``.  ``text``/``vision``
    override the tiny sizes (the decode benchmark passes the 8B sizes)."""
    from transformers import Qwen3VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen3VLConfig(
        text_config={**_TEXT, **(text or {}), "vocab_size": vocab_size or len(tokenizer)},
        vision_config={**_VISION, **(vision or {})},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def set_generation_defaults(model, tokenizer) -> None:
    """End on <|im_end|> or <|endoftext|> and pad with <|endoftext|>, as Qwen3-VL does."""
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.bos_token_id = None


def _widen_init(model, seed: int) -> None:
    """Re-draw linear and embedding weights with std ``WEIGHT_GAIN / sqrt(fan_in)``.

    With the default init (std 0.02) a model this narrow gives almost the same logits for
    every position, and greedy decoding repeats one token whatever the prompt, which would
    make "batched == one by one" and "images change the reply" checks vacuous.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                std = WEIGHT_GAIN / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))


def build_tiny_qwen3vl(seed: int = 0):
    """Return ``(model, tokenizer, image_processor)`` built in memory; same seed, same weights."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(tiny_config(tokenizer)).eval()
    finally:
        torch.random.set_rng_state(rng_state)
    _widen_init(model, seed)
    set_generation_defaults(model, tokenizer)
    return model, tokenizer, tiny_image_processor()


def is_complete(path: str | os.PathLike) -> bool:
    path = pathlib.Path(path)
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED)


def save_tiny_qwen3vl(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Write the tiny model, tokenizer and image processor into ``path`` with save_pretrained,
    unless a complete folder is already there (then it is returned untouched, whatever seed it
    was built with).  The files are written to a sibling temp folder that is renamed into place,
    so a crash never leaves a folder that looks complete; an incomplete one is rebuilt."""
    path = pathlib.Path(path)
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    try:
        model, tokenizer, image_processor = build_tiny_qwen3vl(seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        return publish_folder(tmp, path, is_complete, "tiny Qwen3-VL (seed=%d)" % seed)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
