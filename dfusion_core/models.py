"""Models: a Stable Diffusion bundle from a local diffusers folder or a Hub id, or the `tiny` preset.

Local folders never download; a Hub id resolves through the Hugging Face cache (and downloads
only when the Hub is reachable and HF_HUB_OFFLINE is unset). The tiny preset is built
from configs under a fixed seed (inside `torch.random.fork_rng`, so the caller's global
RNG is untouched). Tokenisation is CLIP's real BPE, shipped in `assets/tokenizer`.
Models are resolved by name (`tiny`, `toy`), folder or Hub id in `dfusion_core.registry.load_model`.
The bundle itself (`DiffusionModel`, tokenisation, the tiny configs) is `dfusion_core.bundle`'s,
re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dfusion_core.bundle import (
    SD_SCHEDULER_CONFIG,
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    DiffusionModel,
    assemble,
    load_tokenizer,
    token_ids,
    tokenizer_dir,
)
from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions, hub_offline, is_hub_id, load_error
from dfusion_core.sdxl import sdxl_parts, to_sdxl_pipeline

# the bundle's names, imported from here by most callers
__all__ = [
    "SD_SCHEDULER_CONFIG", "TINY", "TINY_TEXT_CONFIG", "TINY_UNET_CONFIG", "TINY_VAE_CONFIG", "DiffusionModel",
    "assemble", "build_tiny", "load_pretrained", "load_tokenizer", "save_model", "to_diffusers_pipeline",
    "token_ids", "tokenizer_dir",
]

log = logging.getLogger(__name__)

TINY = "tiny"
TINY_SEED = 0


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
    `*.fp16.safetensors` weights) are passed to every `from_pretrained`. SDXL is told by its UNet's
    config, not by the files found. A Hub id that cannot load raises a ConfigError naming `model`,
    `revision` or `variant` when the job asked for what is not there, and `HubUnavailable` (a
    ConnectionError: retry) when the Hub could not be reached (`dfusion_core.hub.load_error`).
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
    except (OSError, ValueError) as exc:  # diffusers / transformers / huggingface_hub
        if isinstance(exc, ConfigError):
            raise
        # the job's fault (ConfigError naming model, revision or variant) or the Hub's (HubUnavailable: retried)
        raise load_error(exc, name, revision, variant, bool(hub.offline) or hub_offline(), hub.cache_dir) from exc


def _from_pretrained(source, name: str, device, dtype, kw: dict) -> DiffusionModel:
    weights = {k: v for k, v in kw.items() if v is not None}
    files = {k: v for k, v in weights.items() if k != "variant"}  # tokenizer and scheduler have no variants
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **files)
    scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **files)
    xl = sdxl_parts(source, unet, weights, files)  # {} unless an SDXL UNet: then its second text encoder
    log.info("loaded %s (%s)", name, ", ".join(f"{k}={v}" for k, v in weights.items()) or "defaults")
    return assemble(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype, **xl)


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
