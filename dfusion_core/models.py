"""Models: a Stable Diffusion bundle from a local diffusers folder or a Hub id, or the `tiny` preset.

Local folders never download; a Hub id resolves through the Hugging Face cache (and downloads
only when the Hub is reachable and HF_HUB_OFFLINE is unset). The tiny preset is built
from configs under a fixed seed (inside `torch.random.fork_rng`, so the caller's global
RNG is untouched). Tokenisation is CLIP's real BPE, shipped in `assets/tokenizer`.
Models are resolved by name (`tiny`, `toy`), folder or Hub id in `dfusion_core.registry.load_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dfusion_core.conditioning import Conditioning
from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions, is_hub_id, unavailable_message

log = logging.getLogger(__name__)

TINY = "tiny"
TINY_SEED = 0

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
            from dfusion_core.sdxl import encode_sdxl

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


def build_tiny(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """The tiny preset: random weights from configs under a fixed seed, real CLIP tokenisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    return assemble(unet, vae, text_encoder, load_tokenizer(), scheduler, TINY, device, dtype)


def load_pretrained(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    revision: str | None = None,
    variant: str | None = None,
    hub: HubOptions | None = None,
) -> DiffusionModel:
    """A local diffusers folder in SD 1.x / 2.x or SDXL layout (unet/, vae/, text_encoder/, ...), or a Hub id
    (`owner/name`) of one, resolved by `from_pretrained` through the Hugging Face cache.

    `revision` (branch, tag or commit; Hub ids only) and `variant` (e.g. "fp16": the
    `*.fp16.safetensors` weights) are passed to every `from_pretrained`.
    """
    name = str(path)
    root = Path(path)
    if root.is_dir():
        missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (root / sub).is_dir()]
        if missing:
            raise ConfigError("model", f"{root} is not a diffusers Stable Diffusion folder (missing {', '.join(missing)})")
        return _from_pretrained(root, name, device, dtype, {"local_files_only": True, "variant": variant})
    if not is_hub_id(name):
        raise ConfigError("model", f"{name!r} is neither a local diffusers folder nor a Hub id ('owner/name')")
    hub = hub or HubOptions()
    kw: dict[str, Any] = {"revision": revision, "variant": variant, "cache_dir": hub.cache_dir}
    if hub.offline is not None:
        kw["local_files_only"] = hub.offline
    try:
        return _from_pretrained(name, name, device, dtype, kw)
    except (OSError, ValueError) as exc:  # diffusers / transformers / huggingface_hub: not cached, no such repo
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError("model", unavailable_message(name, revision, _first_line(exc))) from exc


def _from_pretrained(source, name: str, device, dtype, kw: dict) -> DiffusionModel:
    weights = {k: v for k, v in kw.items() if v is not None}
    files = {k: v for k, v in weights.items() if k != "variant"}  # tokenizer and scheduler have no variants
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **files)
    scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **files)
    from dfusion_core.sdxl import sdxl_parts

    xl = sdxl_parts(source, weights, files)  # {} unless an SDXL pipeline: then its second text encoder
    log.info("loaded %s (%s)", name, ", ".join(f"{k}={v}" for k, v in weights.items()) or "defaults")
    return assemble(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype, **xl)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def save_model(model: DiffusionModel, path: str | Path) -> Path:
    """Write the model as a diffusers folder that `load_pretrained` and `StableDiffusionPipeline` read."""
    root = Path(path)
    model.unet.save_pretrained(root / "unet")
    model.vae.save_pretrained(root / "vae")
    model.text_encoder.save_pretrained(root / "text_encoder")
    model.tokenizer.save_pretrained(root / "tokenizer")
    model.scheduler.save_pretrained(root / "scheduler")
    if model.is_sdxl:
        model.text_encoder_2.save_pretrained(root / "text_encoder_2")
        model.tokenizer_2.save_pretrained(root / "tokenizer_2")  # type: ignore[union-attr]
    return root


def to_diffusers_pipeline(model: DiffusionModel):  # -> StableDiffusionPipeline | StableDiffusionXLPipeline
    """The same modules as a stock `StableDiffusionPipeline` (no safety checker), or for an SDXL
    model a `StableDiffusionXLPipeline`."""
    from diffusers import StableDiffusionPipeline

    if model.is_sdxl:
        from dfusion_core.sdxl import to_sdxl_pipeline

        return to_sdxl_pipeline(model)

    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.new_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


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
    return DiffusionModel(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype,
                          text_encoder_2, tokenizer_2, zero_uncond)
