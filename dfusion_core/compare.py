"""A trained policy beside its base on the same noise, with the trained model's item masks.

Seed k draws one noise stream (x_T and every DDIM step's noise, `noise_from_seeds`) that both
models denoise: the base with the LoRA adapters off, the policy with them on. With items, the
policy's run carries the fusion attention processors with a controller that fuses nothing (no
fused steps) but records the item masks exactly as a fusion reference does (cross-attention
probabilities of the item tokens at the mask resolution, binarised by the fusion config's mask
mode): the masks shown are those of the trained images shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dfusion_core import attention, pipeline
from dfusion_core.attention import FusionController
from dfusion_core.blocks import mask_side, resolve_blocks
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import ItemTokens
from dfusion_core.lora import adapters_disabled
from dfusion_core.models import DiffusionModel
from dfusion_core.sampling import cfg_denoiser, make_scheduler, noise_from_seeds, rollout
from dfusion_core.scoring import Scorer


@dataclass(frozen=True)
class Comparison:
    """base_images, trained_images uint8 [N, H, W, 3] (row k: seed k, one noise for both);
    base_scores, trained_scores float32 [N]; item_masks float32 [N, items, R, R'] in {0, 1}: the
    trained model's masks at its last step (None without items); mask_resolution R."""

    seeds: tuple[int, ...]
    base_images: torch.Tensor
    trained_images: torch.Tensor
    base_scores: torch.Tensor
    trained_scores: torch.Tensor
    item_masks: torch.Tensor | None
    mask_resolution: int | None


def compare(
    model: DiffusionModel,
    scorer: Scorer,
    prompt: str,
    seeds: Sequence[int],
    config: SamplingConfig,
    *,
    items: Sequence[ItemTokens] = (),
    fusion: FusionConfig | None = None,
) -> Comparison:
    """Sample `prompt` once per seed with the adapters off (the base) and on (the trained policy
    loaded into `model`), score both with `scorer`, and with `items` record the policy's item masks
    under `fusion`'s mask settings (default: FusionConfig())."""
    if not seeds:
        raise ConfigError("seeds", "compare needs at least one seed")
    prompts = [prompt] * len(seeds)
    with adapters_disabled(model.unet):
        base = pipeline.sample(model, prompts, config, seeds=list(seeds))
    if items:
        trained_images, masks, side = sample_with_item_masks(model, prompt, items, seeds, config,
                                                             fusion or FusionConfig())
    else:
        trained = pipeline.sample(model, prompts, config, seeds=list(seeds))
        trained_images, masks, side = torch.stack([t.image for t in trained if t.image is not None]), None, None
    base_images = torch.stack([t.image for t in base if t.image is not None])
    return Comparison(
        seeds=tuple(int(s) for s in seeds), base_images=base_images, trained_images=trained_images,
        base_scores=scorer.score(base_images, prompts).float().cpu(),
        trained_scores=scorer.score(trained_images, prompts).float().cpu(),
        item_masks=masks, mask_resolution=side,
    )


@torch.no_grad()
def sample_with_item_masks(
    model: DiffusionModel,
    prompt: str,
    items: Sequence[ItemTokens],
    seeds: Sequence[int],
    config: SamplingConfig,
    fusion: FusionConfig,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images uint8 [N, H, W, 3] of `prompt` under the current weights, one per seed, and the item
    masks [N, items, R, R'] of the last step (each item's cross-attention map, cut as
    `fusion.mask_mode` says); R is the mask resolution."""
    n = len(seeds)
    h = w = model.latent_size
    side = mask_side(model.unet, h, fusion.mask_resolution)
    ctl = FusionController(
        n=n, blocks=resolve_blocks(model.unet, fusion.blocks), steps=frozenset(), mask_resolution=side,
        latent_hw=(h, w), token_positions=[[list(it.positions) for it in items]] * n,
        thresholds=[[it.threshold for it in items]] * n, mask_mode=fusion.mask_mode, mask_level=fusion.mask_level,
    )
    noise = noise_from_seeds(list(seeds), config.num_steps, pipeline.latent_shape(model))
    scheduler = make_scheduler(model.scheduler, config.num_steps, model.device)
    inner = cfg_denoiser(model.unet, model.encode([prompt] * n), model.encode_uncond(n), config.guidance_scale)

    def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        ctl.begin_call(i, None)  # the rows [uncond x n, cond x n] are the controller's reference role
        eps = inner(x, t, i)
        ctl.end_call()
        return eps

    old = dict(model.unet.attn_processors)
    attention.install(model.unet, ctl)
    try:
        roll = rollout(denoise, scheduler, noise, config.eta, model.device, model.dtype)
    finally:
        model.unet.set_attn_processor(old)
    images = model.decode(roll.latents[:, -1])
    last = ctl.masks[-1].cpu()  # [n, R*R', items]
    masks = last.permute(0, 2, 1).reshape(n, len(items), side, -1)
    return images, masks, side
