"""Fusion of (reference, base) pairs into targets, in lockstep over the DDIM steps (DESIGN §1).

The reference replays its own trajectory (own noise stream, own prompt) and lends its
self-attention keys/values inside the item mask; the target starts from the base's x_T,
uses the base's z_t and prompt. Reference and target run as one batched UNet call; the
authors' redundant base pass is skipped. `sequential=True` runs the reference-like path
(two passes per step) that benchmarks compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from dfusion_core import attention
from dfusion_core.attention import FusionController
from dfusion_core.blocks import mask_side, resolve_blocks
from dfusion_core.conditioning import Conditioning
from dfusion_core.config import FusionConfig
from dfusion_core.errors import ConfigError
from dfusion_core.sampling import NoiseStream, ddim_step_with_logprob, step_scalars


@dataclass(frozen=True)
class FusedBatch:
    """ref_latents, target_latents [n, T+1, C, H, W]; target_log_probs [n, T] (fused network);
    masks [T, n, R*R, items] binary item masks of the reference, per step; timesteps [T]."""

    ref_latents: torch.Tensor
    target_latents: torch.Tensor
    target_log_probs: torch.Tensor
    masks: torch.Tensor
    timesteps: torch.Tensor


def fuse(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    cond: Conditioning | torch.Tensor,
    uncond: Conditioning | torch.Tensor,
    ref_noise: NoiseStream,
    base_noise: NoiseStream,
    token_positions: list[list[list[int]]],
    thresholds: list[list[float]],
    config: FusionConfig,
    *,
    guidance_scale: float,
    eta: float,
    ref_cond: Conditioning | torch.Tensor | None = None,
    sequential: bool = False,
    classic_attention: bool = False,
) -> FusedBatch:
    """Fuse n pairs. cond [n, L, D] is the base's (= target's) prompt embedding, `ref_cond`
    the reference's (default: the same); uncond [n, L, D]. `scheduler` has its timesteps set.
    `sequential` and `classic_attention` give the reference-like path (benchmarks only)."""
    n = base_noise.batch_size
    cond, uncond = Conditioning.of(cond), Conditioning.of(uncond)
    ref_cond = cond if ref_cond is None else Conditioning.of(ref_cond)
    if ref_noise.batch_size != n or len(cond) != n or len(uncond) != n or len(ref_cond) != n:
        raise ConfigError("pairs", "reference noise, base noise and embeddings must have one row per pair")
    num_steps = len(scheduler.timesteps)
    h, w = base_noise.init.shape[-2:]
    ctl = FusionController(
        n=n,
        blocks=resolve_blocks(unet, config.blocks),
        steps=frozenset(config.fused_steps(num_steps)),
        mask_resolution=mask_side(unet, int(h), config.mask_resolution),
        latent_hw=(int(h), int(w)),
        token_positions=token_positions,
        thresholds=thresholds,
        mask_mode=config.mask_mode,
        mask_level=config.mask_level,
    )
    device, dtype = unet.device, unet.dtype
    old = dict(unet.attn_processors)
    attention.install(unet, ctl, classic=classic_attention)
    try:
        with torch.no_grad():
            return _run(unet, scheduler, ctl, cond, ref_cond, uncond, ref_noise, base_noise,
                        guidance_scale, eta, sequential, device, dtype)
    finally:
        unet.set_attn_processor(old)


def _run(unet, scheduler, ctl, cond, ref_cond, uncond, ref_noise, base_noise, w, eta, sequential, device, dtype):
    sigma = scheduler.init_noise_sigma
    x_ref = (ref_noise.init * sigma).to(device, dtype)
    x_tgt = (base_noise.init * sigma).to(device, dtype)
    ref_lat, tgt_lat, tgt_lp = [x_ref.float()], [x_tgt.float()], []  # on the device until the end
    ref_steps, base_steps = ref_noise.steps.to(device), base_noise.steps.to(device)
    cond, ref_cond, uncond = (e.to(device, dtype) for e in (cond, ref_cond, uncond))
    timesteps = [int(t) for t in scheduler.timesteps]
    num_steps = len(timesteps)
    scalars = step_scalars(scheduler, timesteps, eta, x_tgt.device)  # the reference's and the target's
    # The reference runs one step ahead: call k holds the reference at step k and the target at
    # step k-1 (sequential: reference at k, then target at k, as two calls).
    calls = (
        [c for k in range(num_steps) for c in ((k, None), (None, k))]
        if sequential
        else [(k if k < num_steps else None, k - 1 if k > 0 else None) for k in range(num_steps + 1)]
    )
    batched: dict[tuple[bool, bool], Conditioning] = {}  # a call's embeddings by (reference in it, target in it)
    for ref_step, tgt_step in calls:
        ctl.begin_call(ref_step, tgt_step)
        xs, ts, embeds = [], [], []
        if ref_step is not None:
            xs.append(x_ref)
            ts.append(timesteps[ref_step])
            embeds.append((uncond, ref_cond))
        if tgt_step is not None:
            xs.append(x_tgt)
            ts.append(timesteps[tgt_step])
            embeds.append((uncond, cond))
        x_in = torch.cat(xs + xs)
        t_in = torch.tensor([t for t in ts for _ in range(len(x_ref))] * 2, device=device)
        layout = (ref_step is not None, tgt_step is not None)
        if layout not in batched:  # three layouts at most (first call, lockstep, last call): built once each
            batched[layout] = Conditioning.cat([u for u, _ in embeds] + [c for _, c in embeds])
        e_in = batched[layout]
        out = unet(x_in, t_in, **e_in.unet_kwargs()).sample
        ctl.end_call()
        eps_u, eps_c = out.chunk(2)
        eps = (eps_u + w * (eps_c - eps_u)).chunk(len(xs))
        if ref_step is not None:
            step = ddim_step_with_logprob(scheduler, eps[0], ts[0], x_ref, eta, noise=ref_steps[:, ref_step],
                                          scalars=scalars[ref_step])
            x_ref = step.prev_sample
            ref_lat.append(x_ref.float())
        if tgt_step is not None:
            step = ddim_step_with_logprob(scheduler, eps[-1], ts[-1], x_tgt, eta, noise=base_steps[:, tgt_step],
                                          scalars=scalars[tgt_step])
            x_tgt = step.prev_sample
            tgt_lat.append(x_tgt.float())
            tgt_lp.append(step.log_prob.float())
    return FusedBatch(
        ref_latents=torch.stack(ref_lat, 1).cpu(),
        target_latents=torch.stack(tgt_lat, 1).cpu(),
        target_log_probs=torch.stack(tgt_lp, 1).cpu(),
        masks=torch.stack(ctl.masks).cpu(),
        timesteps=scheduler.timesteps.cpu().clone(),
    )
