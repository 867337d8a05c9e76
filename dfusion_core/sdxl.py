"""Stable Diffusion XL: the `tiny-sdxl` preset, SDXL's prompt encoding, and its stock pipeline.

What differs from SD 1.x / 2.x, and where dfusion handles it:

- Two text encoders. The UNet's cross-attention reads both encoders' penultimate hidden states,
  concatenated along the feature axis (768 + 1280 = 2048 in SDXL base); the second encoder's
  pooled, projected output and six size numbers (original size, crop top-left, target size) go
  in as `added_cond_kwargs` (`dfusion_core.bundle.encode_sdxl`, `dfusion_core.conditioning.Conditioning`). With no
  negative prompt the unconditional branch is all zeros (`force_zeros_for_empty_prompt`).
  Both tokenizers split a prompt into the same tokens, so an item word has the same token
  positions in the two encoders' sequences and the fusion mask reads them unchanged.
- Block layout. SDXL has no attention at its highest resolution: its attention blocks, in the
  authors' down / mid / up numbering, are down_blocks.1 (64x64 at 1024 px), down_blocks.2 (32x32,
  10 transformer layers), the mid block (32x32), up_blocks.0 (32x32) and up_blocks.1 (64x64):
  five blocks, 0..4, where SD 2.1 has seven.

Fusion defaults for SDXL (`dfusion_core.blocks.default_fused_blocks`, `blocks.mask_side`),
the same rules as the authors' SD 2.1 settings, applied to SDXL's layout:

- blocks 2..4 = the mid block and every decoder block with attention. The authors fuse SD 2.1's
  mid block and decoder (3..6): the decoder is where the layout the reference lends is rendered,
  while fusing the encoder would also copy the reference's content features into the target.
- mask resolution = latent side / 4 (32x32 for a 128x128 SDXL latent; the authors' 16x16 for SD
  2.1's 64x64): a mask cell covers the same share of the image as in the authors' setting. In
  SDXL that grid is also its lowest-resolution attention level, where 60 of its 70
  cross-attention layers are, so the averaged item map is well sampled. There is no attention
  at latent side / 8 in SDXL, so no coarser mask could be read.

The `tiny-sdxl` preset keeps that shape at toy size: three resolution levels with no attention
at the top one, a mid block, two text encoders of width 32 each (cross-attention width 64) and a
projection of 32, built from configs under a fixed seed like `tiny`, so it runs on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dfusion_core.bundle import (
    SD_SCHEDULER_CONFIG,
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    DiffusionModel,
    assemble,
    encode_sdxl,
    load_tokenizer,
    time_ids,
)

__all__ = ["TINY_SDXL", "build_tiny_sdxl", "encode_sdxl", "sdxl_parts", "time_ids", "to_sdxl_pipeline"]

TINY_SDXL = "tiny-sdxl"
TINY_SDXL_SEED = 0
_TIME_EMBED_DIM = 8  # SDXL base: 256
_PROJECTION_DIM = 32  # SDXL base: 1280

# the tiny preset's sizes (`TINY_UNET_CONFIG`) in SDXL's layout and with its added conditioning
TINY_SDXL_UNET_CONFIG: dict = {
    **TINY_UNET_CONFIG,
    # SDXL's order: no attention at the top resolution, attention in the two lower levels
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 1, 2],  # SDXL base: [1, 2, 10]
    "use_linear_projection": True,
    "cross_attention_dim": 2 * TINY_TEXT_CONFIG["hidden_size"],  # both encoders' states, concatenated
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": 6 * _TIME_EMBED_DIM + _PROJECTION_DIM,
}

TINY_SDXL_TEXT2_CONFIG: dict = {**TINY_TEXT_CONFIG, "projection_dim": _PROJECTION_DIM}


def build_tiny_sdxl(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """The tiny-sdxl preset: random weights from configs under a fixed seed, real CLIP tokenisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SDXL_SEED)
        unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "scaling_factor": 0.13025})  # SDXL's VAE scale
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT2_CONFIG))
    return assemble(unet, vae, text_encoder, load_tokenizer(), DDIMScheduler(**SD_SCHEDULER_CONFIG), TINY_SDXL,
                    device, dtype, text_encoder_2=text_encoder_2, tokenizer_2=load_tokenizer(), zero_uncond=True)


def to_sdxl_pipeline(model: DiffusionModel):  # -> StableDiffusionXLPipeline
    """The same modules as a stock `StableDiffusionXLPipeline`."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
        scheduler=model.new_scheduler(), force_zeros_for_empty_prompt=model.zero_uncond,
    )


def is_sdxl_unet(unet) -> bool:
    """SDXL's UNet takes the second encoder's pooled output and the size ids (`text_time` embedding)."""
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def sdxl_parts(source, unet, weights: dict, files: dict) -> dict:
    """For an SDXL UNet (`is_sdxl_unet`) loaded from `source`, a pipeline folder or Hub id: its second
    text encoder and tokenizer and its `force_zeros_for_empty_prompt`, as `assemble` keywords; {} for
    any other UNet. Told by the UNet's config, so a file the Hub fails to send cannot make an SDXL
    repo load as SD 1.x: errors loading its parts propagate."""
    if not is_sdxl_unet(unet):
        return {}
    return {
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **weights),
        "tokenizer_2": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **files),
        "zero_uncond": bool(_model_index(source, files).get("force_zeros_for_empty_prompt", True)),
    }


def _model_index(source, files: dict) -> dict:
    """The pipeline's model_index.json, or {} where there is none (a folder written by `save_model`, a
    repo of components; the flag it holds then takes SDXL's default). Only a file that is not there
    reads as none: any other failure (the Hub unreachable while online) propagates."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from dfusion_core.hub import hub_offline

    root = Path(str(source))
    if root.is_dir():
        return json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").is_file() else {}
    offline = bool(files.get("local_files_only")) or hub_offline()
    try:
        path = hf_hub_download(str(source), "model_index.json", revision=files.get("revision"),
                               cache_dir=files.get("cache_dir"), local_files_only=offline)
    except EntryNotFoundError as exc:
        if isinstance(exc, LocalEntryNotFoundError) and not offline:  # online, and the Hub did not answer
            raise
        return {}
    return json.loads(Path(path).read_text())
