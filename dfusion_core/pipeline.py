"""The model-level API the workers and the trainer call: sample prompts, fuse pairs,
score log-probs of stored trajectories. Thin compositions of sampling, attention and fusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dfusion_core.blocks import mask_side
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.fusion import fuse
from dfusion_core.items import ItemTokens
from dfusion_core.lora import adapters_disabled
from dfusion_core.models import DiffusionModel
from dfusion_core.sampling import (
    NoiseStream,
    cfg_denoiser,
    make_scheduler,
    noise_from_seeds,
    rollout,
    trajectory_log_probs,
)
from dfusion_core.trajectories import Trajectory


def latent_shape(model: DiffusionModel) -> tuple[int, int, int]:
    return (model.latent_channels, model.latent_size, model.latent_size)


def sample(
    model: DiffusionModel,
    prompts: Sequence[str],
    config: SamplingConfig,
    *,
    seeds: Sequence[int] | None = None,
    noise: NoiseStream | None = None,
    policy_version: int = 0,
    decode: bool = True,
) -> list[Trajectory]:
    """One trajectory per prompt; randomness from `seeds` (one per prompt) or explicit `noise`."""
    if (seeds is None) == (noise is None):
        raise ConfigError("seeds", "pass exactly one of `seeds` or `noise`")
    if seeds is not None:
        if len(seeds) != len(prompts):
            raise ConfigError("seeds", f"{len(seeds)} seeds for {len(prompts)} prompts")
        noise = noise_from_seeds(list(seeds), config.num_steps, latent_shape(model))
    assert noise is not None
    if noise.batch_size != len(prompts):
        raise ConfigError("noise", f"noise for {noise.batch_size} samples, {len(prompts)} prompts")
    out: list[Trajectory] = []
    for start in range(0, len(prompts), config.batch_size):
        chunk = list(range(start, min(start + config.batch_size, len(prompts))))
        # Every UNet call has the same batch size (a short chunk is padded with copies of its
        # last row): kernels pick algorithms by shape, so this makes a sample's numbers exactly
        # independent of what else shares its batch, not merely close.
        padded = chunk + [chunk[-1]] * (config.batch_size - len(chunk))
        trajs = _sample_chunk(model, [prompts[i] for i in padded], noise.select(padded),
                              None if seeds is None else [seeds[i] for i in padded], config, policy_version,
                              decode, keep=len(chunk))
        out += trajs
    return out


@torch.no_grad()
def _sample_chunk(model, prompts, noise, seeds, config, policy_version, decode, keep) -> list[Trajectory]:
    scheduler = make_scheduler(model.scheduler, config.num_steps, model.device)
    cond = model.encode(list(prompts))
    uncond = model.encode_uncond(len(prompts))
    denoise = cfg_denoiser(model.unet, cond, uncond, config.guidance_scale)
    roll = rollout(denoise, scheduler, noise, config.eta, model.device, model.dtype)
    images = model.decode(roll.latents[:keep, -1]) if decode else [None] * keep
    return [
        Trajectory(
            prompt=p,
            seed=None if seeds is None else seeds[k],
            policy_version=policy_version,
            latents=roll.latents[k],
            timesteps=roll.timesteps,
            log_probs=roll.log_probs[k],
            eta=config.eta,
            guidance_scale=config.guidance_scale,
            step_noise=None if seeds is not None else noise.steps[k],
            image=images[k],
        )
        for k, p in enumerate(prompts[:keep])
    ]


@dataclass(frozen=True)
class FusedPair:
    """target: the fused trajectory (the winner; the base is the loser).
    masks [T, R*R, items]: the reference's binary item masks per step."""

    target: Trajectory
    masks: torch.Tensor
    mask_resolution: int


def fuse_pairs(
    model: DiffusionModel,
    references: Sequence[Trajectory],
    bases: Sequence[Trajectory],
    items: Sequence[Sequence[ItemTokens]],
    config: FusionConfig,
    *,
    decode: bool = True,
    sequential: bool = False,
    classic_attention: bool = False,
) -> list[FusedPair]:
    """Fuse each (reference k, base k) with the reference's items k; replays under the current weights."""
    n = len(bases)
    if len(references) != n or len(items) != n:
        raise ConfigError("pairs", "need as many references and item lists as bases")
    if n == 0:
        return []
    base0 = bases[0]
    for t in (*references, *bases):
        if t.num_steps != base0.num_steps or t.eta != base0.eta or t.guidance_scale != base0.guidance_scale:
            raise ConfigError("pairs", "all trajectories of a fusion batch need the same steps, eta and guidance")
    scheduler = make_scheduler(model.scheduler, base0.num_steps, model.device)
    sigma = float(scheduler.init_noise_sigma)
    ref_noise = NoiseStream.cat([t.noise(sigma) for t in references])
    base_noise = NoiseStream.cat([t.noise(sigma) for t in bases])
    cond = model.encode([t.prompt for t in bases])
    ref_cond = model.encode([t.prompt for t in references])
    uncond = model.encode_uncond(n)
    result = fuse(
        model.unet, scheduler, cond, uncond, ref_noise, base_noise,
        [[list(it.positions) for it in pair] for pair in items],
        [[it.threshold for it in pair] for pair in items],
        config,
        guidance_scale=base0.guidance_scale, eta=base0.eta, ref_cond=ref_cond, sequential=sequential,
        classic_attention=classic_attention,
    )
    images = model.decode(result.target_latents[:, -1]) if decode else [None] * n
    return [
        FusedPair(
            target=Trajectory(
                prompt=b.prompt, seed=b.seed, policy_version=b.policy_version,
                latents=result.target_latents[k], timesteps=result.timesteps,
                log_probs=result.target_log_probs[k], eta=b.eta, guidance_scale=b.guidance_scale,
                kind="target", step_noise=b.step_noise, image=images[k],
            ),
            masks=result.masks[:, k],
            mask_resolution=mask_side(model.unet, model.latent_size, config.mask_resolution),
        )
        for k, b in enumerate(bases)
    ]


def log_probs(
    model: DiffusionModel,
    trajectories: Sequence[Trajectory],
    *,
    adapters: bool = True,
    steps: Sequence[int] | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """log p(x_{t-1} | x_t) [B, len(steps)] of stored trajectories under the plain network
    (no fusion): the policy (`adapters=True`) or the reference model (`adapters=False`)."""
    if not trajectories:
        raise ConfigError("trajectories", "no trajectories given")
    first = trajectories[0]
    scheduler = make_scheduler(model.scheduler, first.num_steps, model.device)
    latents = torch.stack([t.latents for t in trajectories]).to(model.device, model.dtype)
    cond = model.encode([t.prompt for t in trajectories])
    uncond = model.encode_uncond(len(trajectories))
    denoise = cfg_denoiser(model.unet, cond, uncond, first.guidance_scale)
    with torch.set_grad_enabled(grad):
        if adapters:
            return trajectory_log_probs(denoise, scheduler, latents, first.eta, steps)
        with adapters_disabled(model.unet):
            return trajectory_log_probs(denoise, scheduler, latents, first.eta, steps)
