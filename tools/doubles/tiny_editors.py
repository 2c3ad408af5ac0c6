"""Tiny random-weight FLUX.1-Kontext and Qwen-Image-Edit-Plus pipelines, built fully offline.

Why this exists: the generator supports three model families (``tools.generator.models``), and
each one is called with its own keyword arguments (Kontext needs ``max_area`` to keep the
requested size, Qwen-Image-Edit needs ``true_cfg_scale`` with a negative prompt and an input
image even for step 1). The real checkpoints are tens of gigabytes on a Hub the tests cannot
reach, so -- like ``tools.doubles.tiny_klein`` for FLUX.2 [klein] -- these builders make pipelines of
the very same diffusers and transformers classes with tiny random weights and in-memory
tokenizers, and ``save_tiny_*`` writes them with ``save_pretrained``. The product then loads
the folder through its real loader (``tools.generator.diffusion.load_pipeline``), so family detection from
``model_index.json``, the loader, and every family-specific argument run for real on CPU.

The images are noise-like and meaningless; they have the requested size and depend on prompt,
seed and input image. Building, saving and one 64x64 two-step call take well under a second.

Tokenizers without downloads:
* CLIP: a byte-level BPE with the 256 byte symbols (plain and end-of-word) and no merges.
* T5: a Unigram model over single characters.
* Qwen2: the byte-level BPE trained in memory by ``tools.doubles.tiny_klein``, plus the vision tokens
  Qwen2.5-VL needs; the processor uses the PIL image processor and no video processor (the
  video processor needs torchvision, which the CPU set-up does not have).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import string
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLProcessor,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from tools.doubles.tiny_klein import _build_tokenizer as _qwen_bpe_tokenizer

__all__ = ["build_tiny_kontext_pipeline", "save_tiny_kontext", "build_tiny_qwen_edit_pipeline", "save_tiny_qwen_edit"]

LATENT_CHANNELS = 4
TEXT_HIDDEN = 16


def _clip_tokenizer() -> CLIPTokenizer:
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    characters = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    pieces += [(c, -3.0) for c in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _vae(latent_channels: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 8),  # 4 blocks -> vae_scale_factor 8, as in FLUX.1
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.5,
        shift_factor=0.1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def build_tiny_kontext_pipeline(seed: int = 0) -> FluxKontextPipeline:
    """A ``FluxKontextPipeline`` of tiny random components (same seed -> same weights)."""
    rng_state = torch.random.get_rng_state()
    try:
        tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_HIDDEN,
                intermediate_size=2 * TEXT_HIDDEN,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=TEXT_HIDDEN,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        ).eval()
        torch.manual_seed(seed + 1)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=TEXT_HIDDEN,
                d_kv=8,
                d_ff=2 * TEXT_HIDDEN,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        ).eval()
        torch.manual_seed(seed + 2)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=TEXT_HIDDEN,
            pooled_projection_dim=TEXT_HIDDEN,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ).eval()  # sums to attention_head_dim
        torch.manual_seed(seed + 3)
        vae = _vae(LATENT_CHANNELS)
    finally:
        torch.random.set_rng_state(rng_state)
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def save_tiny_kontext(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Write the tiny Kontext pipeline with ``save_pretrained`` (kept if already there)."""
    return _save(build_tiny_kontext_pipeline, path, seed)


_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, which cannot be built without torchvision.

    The edit pipeline only ever passes images, so nothing is lost; the real checkpoints load the
    stock ``Qwen2VLProcessor``. Saved pipelines name this class in ``model_index.json`` and
    diffusers imports it from this module when loading.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def build_tiny_qwen_edit_pipeline(seed: int = 0) -> QwenImageEditPlusPipeline:
    """A ``QwenImageEditPlusPipeline`` (the class of Qwen-Image-Edit-2509/2511) of tiny parts.

    The VAE keeps the real temporal-downsampling layout, so ``vae_scale_factor`` is 8 and sizes
    are multiples of 16 as for the real model. The pipeline encodes every input image at about
    1 MP whatever the output size (its module constant ``VAE_IMAGE_SIZE``), which costs seconds
    on CPU even with tiny weights; tests lower that constant.
    """
    rng_state = torch.random.get_rng_state()
    try:
        tokenizer = _qwen_bpe_tokenizer()
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *_VISION_TOKENS]})
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _VISION_TOKENS}
        processor = ImageOnlyQwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112), tokenizer=tokenizer
        )
        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config={
                    "hidden_size": TEXT_HIDDEN,
                    "intermediate_size": TEXT_HIDDEN,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                    "vocab_size": len(tokenizer),
                    "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                    "rope_theta": 1000000.0,
                    "bos_token_id": None,
                    "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                    "pad_token_id": tokenizer.pad_token_id,
                },
                vision_config={
                    "depth": 1,
                    "hidden_size": TEXT_HIDDEN,
                    "intermediate_size": TEXT_HIDDEN,
                    "num_heads": 2,
                    "out_hidden_size": TEXT_HIDDEN,
                    "fullatt_block_indexes": [0],
                },
                vocab_size=len(tokenizer),
                image_token_id=ids["<|image_pad|>"],
                video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"],
                vision_end_token_id=ids["<|vision_end|>"],
            )
        ).eval()
        torch.manual_seed(seed + 1)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=TEXT_HIDDEN,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        ).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=LATENT_CHANNELS,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * LATENT_CHANNELS,
            latents_std=[1.0] * LATENT_CHANNELS,
        ).eval()
    finally:
        torch.random.set_rng_state(rng_state)
    return QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )


def save_tiny_qwen_edit(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Write the tiny Qwen-Image-Edit-Plus pipeline with ``save_pretrained`` (kept if already there)."""
    return _save(build_tiny_qwen_edit_pipeline, path, seed)


def _save(build, path: str | os.PathLike, seed: int) -> pathlib.Path:
    """save_pretrained into a temporary sibling, then rename: a crash never leaves a folder
    with a model_index.json (written first by save_pretrained) but missing weights."""
    path = pathlib.Path(path)
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        build(seed).save_pretrained(tmp, safe_serialization=True)
        if path.exists():  # a half-written folder from an earlier crash
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
