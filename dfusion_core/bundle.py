"""The model bundle: the parts of a Stable Diffusion (1.x / 2.x or XL) pipeline that dfusion drives,
how they encode a prompt (SDXL's two encoders included), and the configs the tiny presets build from.

The lowest of the model modules: `dfusion_core.sdxl` (the tiny-sdxl preset, SDXL loading and its
stock pipeline) and `dfusion_core.models` (loading, saving, the tiny preset) build on it, and
`dfusion_core.models` re-exports its names. SDXL's prompt encoding (`encode_sdxl`) lives here
because `DiffusionModel.encode` calls it; `dfusion_core.sdxl`'s docstring says how it differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dfusion_core.attention import cache_processor_signatures
from dfusion_core.conditioning import Conditioning

# SD 2.1-base's DDIM schedule (its scheduler_config.json); the golden cases use it too.
SD_SCHEDULER_CONFIG: dict = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

TINY_UNET_CONFIG: dict = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 16,
}

TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}

TINY_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


@dataclass
class DiffusionModel:
    """The parts of a Stable Diffusion (1.x / 2.x or XL) pipeline that dfusion drives, on one device.

    SDXL models also carry the second text encoder (`CLIPTextModelWithProjection`) and its
    tokenizer; `zero_uncond` is the pipeline's `force_zeros_for_empty_prompt` (SDXL's
    unconditional branch is all zeros rather than the empty prompt's embedding).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    name: str
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: Any = None
    tokenizer_2: CLIPTokenizer | None = None
    zero_uncond: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """What the UNet is conditioned on for each prompt: hidden states [B, L, D] padded to the
        tokenizer's context window (SDXL: both encoders' penultimate layers, pooled embeds, time ids)."""
        if self.is_sdxl:
            return encode_sdxl(self, prompts)
        return Conditioning(self.text_encoder(token_ids(self.tokenizer, prompts, self.device))[0].to(self.dtype))

    def encode_uncond(self, n: int) -> Conditioning:
        """The unconditional branch of classifier-free guidance for n rows."""
        empty = self.encode([""])
        if self.zero_uncond:
            empty = Conditioning(torch.zeros_like(empty.hidden),
                                 None if empty.pooled is None else torch.zeros_like(empty.pooled), empty.time_ids)
        return empty.repeat(n)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> images uint8 [B, H, W, 3]."""
        scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        images = self.vae.decode(latents.to(self.device, self.vae.dtype) / scale).sample
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu()

    def new_scheduler(self) -> DDIMScheduler:
        """A fresh scheduler (set_timesteps mutates state; each run gets its own)."""
        return DDIMScheduler.from_config(self.scheduler.config)


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Token ids [B, L] of the prompts, padded (and truncated) to the tokenizer's context window."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def tokenizer_dir() -> Path:
    return Path(str(resources.files("dfusion_core") / "assets" / "tokenizer"))


def load_tokenizer(path: str | Path | None = None) -> CLIPTokenizer:
    """CLIP BPE tokenizer from a folder with vocab.json + merges.txt (default: the shipped one)."""
    folder = Path(path) if path is not None else tokenizer_dir()
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def time_ids(model: DiffusionModel, n: int) -> torch.Tensor:
    """SDXL's micro-conditioning [n, 6]: (original h, w, crop top, left, target h, w), all at the output
    size, as `StableDiffusionXLPipeline` sends them when none are given."""
    side = model.latent_size * model.vae_scale
    return torch.tensor([[side, side, 0, 0, side, side]], dtype=model.dtype, device=model.device).repeat(n, 1)


@torch.no_grad()
def encode_sdxl(model: DiffusionModel, prompts: list[str]) -> Conditioning:
    """`StableDiffusionXLPipeline.encode_prompt` for one prompt per row (no clip skip): both
    encoders' penultimate hidden states, concatenated; the second encoder's pooled projection."""
    if model.tokenizer_2 is None or model.text_encoder_2 is None:
        raise ValueError("an SDXL model needs its second tokenizer and text encoder")
    hidden, pooled = [], None
    for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
        out = encoder(token_ids(tokenizer, prompts, model.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds come first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("an SDXL model needs a second text encoder with a projection (CLIPTextModelWithProjection)")
    return Conditioning(torch.cat(hidden, dim=-1).to(model.dtype), pooled.to(model.dtype), time_ids(model, len(prompts)))



def assemble(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype, *,
             text_encoder_2=None, tokenizer_2=None, zero_uncond: bool = False) -> DiffusionModel:
    """Frozen, eval-mode modules on `device` in `dtype`, with a DDIM scheduler, as one `DiffusionModel`."""
    device = torch.device(device)
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is None:
            continue
        module.requires_grad_(False)
        module.eval()
        module.to(device)
        # SDXL's VAE overflows in fp16 (its config says force_upcast): it stays fp32, as the stock
        # SDXL pipeline upcasts it to decode; `decode` casts the latents to the VAE's dtype
        keep_fp32 = module is vae and text_encoder_2 is not None and getattr(vae.config, "force_upcast", False)
        want = torch.float32 if keep_fp32 else dtype
        if next(module.parameters()).dtype != want:
            module.to(dtype=want)
    if not isinstance(scheduler, DDIMScheduler):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    cache_processor_signatures(unet, vae)
    return DiffusionModel(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype,
                          text_encoder_2, tokenizer_2, zero_uncond)
