"""A tiny, random-weight FLUX.2 [klein] pipeline, built fully offline.

Why this exists
---------------
The product generates and edits images through ``diffusers.Flux2KleinPipeline``
loaded with ``DiffusionPipeline.from_pretrained(path)``.  The real checkpoint is
many gigabytes, needs a GPU to be usable, and lives on the Hugging Face Hub, which
the offline demo and the test suite cannot reach.  This module is a *test double
at the model boundary*: it builds a pipeline of the very same classes
(``Flux2KleinPipeline`` with ``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``,
``Qwen3ForCausalLM``, a Qwen2 tokenizer with a chat template and
``FlowMatchEulerDiscreteScheduler``), only with tiny random weights, and writes it
with ``save_pretrained``.  The product then loads that folder through exactly the
code path it uses for real weights, so the offline demo and the tests exercise
the real pipeline code (prompt templating, tokenisation, text encoding, latent
packing, the denoising loop, VAE encode/decode, PIL post-processing).  The images
it produces are meaningless noise-like pictures, but they have the requested size,
depend on prompt, seed and input image, and are deterministic.

Nothing is downloaded: the tokenizer is a small byte-level BPE trained in memory
on a built-in English corpus, and all weights are drawn from ``torch`` with a
fixed seed (same ``seed`` -> identical weights -> identical images for the same
generator seed).

Shapes
------
* Text encoder: Qwen3 with 28 layers (so the pipeline's default
  ``text_encoder_out_layers=(9, 18, 27)`` works unchanged) of hidden size
  ``TEXT_HIDDEN``; the pipeline stacks those three hidden states, so the
  transformer's ``joint_attention_dim`` is ``3 * TEXT_HIDDEN``.
* VAE: 4 down/up blocks, so ``pipe.vae_scale_factor == 8`` -- the same as the real
  FLUX.2 VAE.  The pipeline packs latents in 2x2 patches, so **valid output sizes
  are multiples of 16** (``pipe.vae_scale_factor * 2``) in both height and width,
  exactly as for the real model (other sizes are rounded down by the pipeline,
  with a warning).  Edit inputs are cropped to a multiple of 16 as well.
* Transformer: one double-stream and one single-stream block, 2 heads of 16.

* Guidance: saved with ``is_distilled=True`` like the real klein (4-step
  distilled), so ``guidance_scale`` is ignored (a value > 1 only logs a warning).

Speed (CPU, 2 threads, 2 inference steps): about 0.05 s wall / 0.09 s CPU per
call at 64x64 and at 128x128, text-to-image or edit.  The saved folder is about
0.7 MB and builds, saves or loads in about 0.1 s.

Usage (note ``prompt=`` as a keyword: the pipeline's first positional
parameter is ``image``)::

    path = save_tiny_klein("/tmp/tiny-klein")
    pipe = DiffusionPipeline.from_pretrained(path)   # -> Flux2KleinPipeline
    image = pipe(prompt="a red bicycle", height=128, width=128, num_inference_steps=2,
                 guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).images[0]
    edited = pipe(prompt="make it blue", image=image, height=128, width=128,
                  num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import uuid

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from tools.doubles.model_folders import publish_folder

__all__ = ["build_tiny_klein_pipeline", "save_tiny_klein"]

logger = logging.getLogger(__name__)

#: Hidden size of the tiny Qwen3 text encoder.
TEXT_HIDDEN = 16
#: Number of text-encoder layers; must exceed 27 for the default (9, 18, 27).
TEXT_LAYERS = 28
#: Latent channels of the tiny VAE (the transformer sees 4x this after 2x2 packing).
LATENT_CHANNELS = 4
#: Target vocabulary size of the in-memory BPE (256 byte symbols + merges).
BPE_VOCAB_SIZE = 384
#: Init gain of the transformer's linear layers (see ``_sharpen_transformer_init``).
LINEAR_GAIN = 1.5
#: Value of the transformer's QK RMSNorm weights (larger -> sharper attention).
QK_NORM_SCALE = 4.0

_MODEL_INDEX = "model_index.json"

# Special tokens of the Qwen family, in the order Qwen assigns them.
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The same pre-tokenisation regex Qwen2Tokenizer uses, so that the tokenizer
# behaves identically before saving and after ``from_pretrained`` (which rebuilds
# the backend from vocab + merges with Qwen2Tokenizer's own pipeline).
_QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A minimal Qwen3-style chat template.  It accepts (and, like Qwen3 with
# enable_thinking=False, emits an empty think block for) the keyword the
# pipeline passes: apply_chat_template(..., add_generation_prompt=True,
# enable_thinking=False).
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Small built-in English corpus for the in-memory BPE (no downloads).
_CORPUS = """\
A red bicycle leans against a brick wall in the morning light.
A small cat sleeps on a blue chair next to the open window.
The old lighthouse stands on the rocky coast under a stormy sky.
Draw a cozy kitchen with a wooden table, a bowl of green apples and a teapot.
Make the sky orange at sunset and add birds flying over the calm sea.
A watercolor painting of a mountain village covered in fresh snow.
Turn the photo into a pencil sketch and keep the person in the center.
Replace the background with a forest of tall pine trees and soft fog.
A portrait of a smiling woman wearing a yellow raincoat in the city rain.
Add a bright rainbow above the river and make the grass greener.
The robot holds a glowing lantern while walking through a dark cave.
Step one: mix the flour and water. Step two: knead the dough for ten minutes.
Show the same scene at night with stars, street lamps and a full moon.
A close-up of a butterfly resting on a purple flower in the garden.
Remove the car from the street and keep the shadows of the buildings.
An illustration for a children's story about a brave little fox and a wise owl.
The train crosses a stone bridge over a deep green valley in autumn.
Generate a simple diagram with three boxes connected by arrows.
Please make the image brighter, sharper and more colorful, without changing the layout.
"""


def _build_tokenizer() -> Qwen2TokenizerFast:
    """Train a small byte-level BPE in memory and wrap it as a Qwen2 tokenizer."""
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
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(_SPECIAL_TOKENS[1:]),
        model_max_length=131072,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _sharpen_transformer_init(transformer: Flux2Transformer2DModel) -> None:
    """Re-draw the transformer weights so that prompt and reference image visibly matter.

    With PyTorch's default ``nn.Linear`` init every layer shrinks activations (std
    ``1/sqrt(3 * fan_in)``) and the random query/key vectors give an almost uniform
    attention over the ~600 tokens, so the output is nearly a function of the noise
    alone: changing the prompt or the edit input moved pixels by ~0.01 grey levels.
    A slightly expanding init (std ``LINEAR_GAIN / sqrt(fan_in)``) and larger QK-norm
    scales (sharper attention) make prompt, seed and input image each change the
    picture by about 20-45 grey levels (mean absolute difference, 128x128).  Uses the global torch RNG
    (seeded by the caller).
    """
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, LINEAR_GAIN / module.in_features**0.5)
                if module.bias is not None:
                    module.bias.zero_()
        for name, param in transformer.named_parameters():
            leaf = name.rsplit(".", 2)[-2]
            if leaf in {"norm_q", "norm_k", "norm_added_q", "norm_added_k"}:
                param.fill_(QK_NORM_SCALE)


def build_tiny_klein_pipeline(seed: int = 0) -> Flux2KleinPipeline:
    """Build the tiny random-weight ``Flux2KleinPipeline`` in memory (no I/O, no network).

    Every component is created right after ``torch.manual_seed(seed + k)``, so the same
    ``seed`` always yields identical weights.  Output sizes must be multiples of 16
    (``pipe.vae_scale_factor * 2``); see the module docstring.  The global torch RNG is
    restored afterwards, so building does not disturb the caller's random state.
    """
    rng_state = torch.random.get_rng_state()
    try:
        tokenizer = _build_tokenizer()

        torch.manual_seed(seed)
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_HIDDEN,
                intermediate_size=2 * TEXT_HIDDEN,
                num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=TEXT_HIDDEN // 2,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
                bos_token_id=None,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        ).eval()

        torch.manual_seed(seed + 1)
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,  # the pipeline packs latents in 2x2 patches
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * TEXT_HIDDEN,  # 3 stacked text-encoder layers
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
            guidance_embeds=False,
        ).eval()
        _sharpen_transformer_init(transformer)

        torch.manual_seed(seed + 2)
        vae = AutoencoderKLFlux2(
            sample_size=128,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(4, 8, 8, 8),  # 4 blocks -> vae_scale_factor 8, like the real VAE
            layers_per_block=1,
            latent_channels=LATENT_CHANNELS,
            norm_num_groups=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ).eval()

        scheduler = FlowMatchEulerDiscreteScheduler()
    finally:
        torch.random.set_rng_state(rng_state)

    return Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


def _is_complete(path: pathlib.Path) -> bool:
    """True when ``path`` holds a finished save: model_index.json plus every component folder."""
    index_file = path / _MODEL_INDEX
    if not index_file.is_file():
        return False
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        component = path / name
        if not component.is_dir() or not any(component.iterdir()):
            return False
    return True


def save_tiny_klein(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Write the tiny pipeline with save_pretrained into `path` unless a complete copy is already there
    (model_index.json present and written last, so a half-written folder is rebuilt); return the path.
    Write atomically: build into a sibling temp folder then rename, so a crash never leaves a folder
    that looks complete.

    A folder that exists but is not complete (no ``model_index.json``, or a component folder
    listed in it missing) is deleted and rebuilt.  An existing complete folder is returned
    untouched, whatever seed it was built with.
    """
    path = pathlib.Path(path)
    if _is_complete(path):
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling (same filesystem, so the final rename is atomic).  os.mkdir rather
    # than tempfile.mkdtemp so the folder gets the usual umask-based mode, not 0700.
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    try:
        pipe = build_tiny_klein_pipeline(seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # save_pretrained writes model_index.json first; rewrite it so that it is the last
        # file written (the completeness marker never predates the components).
        index_file = tmp / _MODEL_INDEX
        index_bytes = index_file.read_bytes()
        index_file.unlink()
        index_file.write_bytes(index_bytes)

        return publish_folder(tmp, path, _is_complete, "tiny klein pipeline (seed=%d)" % seed)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
