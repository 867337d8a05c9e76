"""Preference and policy-gradient losses, as pure tensor functions (DESIGN §1, "Training").

Every function takes per-sample (or per-sample-per-step) tensors and returns a `LossOutput`
whose `loss` is a scalar mean to differentiate, `margin` a detached scalar to monitor (positive
when the policy moves the way the preference asks) and `extra` a few detached scalars.

Shapes: `[B]` or `[B, S]` (B samples or pairs, S denoising steps); inputs of one call share a shape,
except advantages, which may be `[B]` against `[B, S]` log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dfusion_core.errors import ConfigError


@dataclass(frozen=True)
class LossOutput:
    """loss: scalar to backpropagate. margin: detached scalar, the preference margin.
    extra: detached scalars for logging (accuracy, clip fraction, KL, ...)."""

    loss: torch.Tensor
    margin: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ConfigError("shapes", f"inputs must share one shape, got {shapes}")


def trajectory_dpo_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_w: torch.Tensor,
    ref_logp_l: torch.Tensor,
    beta: float,
    eps: float,
) -> LossOutput:
    """Trajectory DPO, D3PO-style (Yang et al. 2024, eq. 9; DESIGN §1), per pair and step.

    All inputs [B] or [B, S]: log p(x_{t-1} | x_t) of the winner (w) and loser (l) under the
    policy pi_theta (with grad) and the frozen reference pi_ref (adapters off).
      (1) r = clamp(exp(log pi_theta - log pi_ref), 1 - eps, 1 + eps)
      (2) loss = -log sigmoid(beta log r_w - beta log r_l), mean over pairs and steps.
    The clamp is applied to log r (same value, same zero gradient outside the range, but no
    inf * 0 = nan when exp overflows). Outside [1-eps, 1+eps] the term has no gradient.
    margin = mean((logp_w - ref_w) - (logp_l - ref_l)).
    """
    _same_shape(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    if not 0.0 < eps < 1.0:
        raise ConfigError("eps", f"ratio clamp eps must lie in (0, 1), got {eps}")
    lo, hi = math.log1p(-eps), math.log1p(eps)
    diff_w = logp_w.float() - ref_logp_w.float()
    diff_l = logp_l.float() - ref_logp_l.float()
    log_r_w = diff_w.clamp(lo, hi)  # (1)
    log_r_l = diff_l.clamp(lo, hi)
    logits = beta * log_r_w - beta * log_r_l
    loss = -F.logsigmoid(logits).mean()  # (2)
    margin = (diff_w - diff_l).detach()
    clipped = ((diff_w < lo) | (diff_w > hi) | (diff_l < lo) | (diff_l > hi)).float()
    return LossOutput(
        loss,
        margin.mean(),
        {"accuracy": (margin > 0).float().mean(), "clip_fraction": clipped.mean(),
         "ratio_w": diff_w.detach().exp().mean(), "ratio_l": diff_l.detach().exp().mean()},
    )


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    ref_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> LossOutput:
    """Diffusion-DPO (Wallace et al. 2024, eq. 14), inputs [B]: per-sample noise-prediction
    MSE |eps - eps_theta(x_t, t)|^2 (model) and |eps - eps_ref(x_t, t)|^2 (reference) of the
    winner (w) and loser (l), noised with a shared t and eps.
      (1) d = (mse_w - ref_mse_w) - (mse_l - ref_mse_l)
      (2) loss = -log sigmoid(-beta / 2 * d), mean over pairs.
    margin = mean(-d): positive when the policy denoises the winner better, relative to the loser,
    than the reference does.
    """
    _same_shape(model_err_w=model_err_w, ref_err_w=ref_err_w, model_err_l=model_err_l, ref_err_l=ref_err_l)
    d = (model_err_w.float() - ref_err_w.float()) - (model_err_l.float() - ref_err_l.float())  # (1)
    loss = -F.logsigmoid(-0.5 * beta * d).mean()  # (2)
    d = d.detach()
    return LossOutput(
        loss,
        (-d).mean(),
        {"accuracy": (d < 0).float().mean(), "model_err_w": model_err_w.detach().float().mean(),
         "model_err_l": model_err_l.detach().float().mean()},
    )


def _advantages_like(advantages: torch.Tensor, logp: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    adv = advantages.to(logp.device, torch.float32)
    if adv.ndim == 1 and logp.ndim == 2:
        adv = adv[:, None]
    if adv.shape[0] != logp.shape[0]:
        raise ConfigError("advantages", f"{adv.shape[0]} advantages for {logp.shape[0]} samples")
    return adv.clamp(-adv_clip_max, adv_clip_max)


def ddpo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> LossOutput:
    """DDPO with PPO clipping (Black et al. 2024, eq. 4; ddpo-pytorch `train.py`).

    logp [B, S] (or [B]): policy log-probs with grad; old_logp same shape: those of the policy
    that produced the samples (no grad); advantages [B] (broadcast over steps) or like logp.
      (1) A = clamp(advantages, -adv_clip_max, adv_clip_max)
      (2) rho = exp(logp - old_logp)
      (3) loss = mean(max(-A rho, -A clamp(rho, 1 - clip_range, 1 + clip_range)))
    margin = mean(A (logp - old_logp)): positive when high-advantage samples gained likelihood.
    """
    _same_shape(logp=logp, old_logp=old_logp)
    adv = _advantages_like(advantages, logp, adv_clip_max)  # (1)
    log_ratio = logp.float() - old_logp.float()
    ratio = log_ratio.exp()  # (2)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()  # (3)
    lr = log_ratio.detach()
    return LossOutput(
        loss,
        (adv * lr).mean(),
        {"approx_kl": 0.5 * (lr**2).mean(), "clip_fraction": ((ratio.detach() - 1).abs() > clip_range).float().mean()},
    )


def dpok_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    kl_weight: float,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> LossOutput:
    """DPOK (Fan et al. 2023, eq. 8): clipped policy gradient plus a KL penalty to the
    pretrained model, per step.

    logp, old_logp, ref_logp [B, S] (or [B]); advantages [B] or like logp.
      (1) L_pg = ddpo_clip_loss(logp, old_logp, A)
      (2) KL(pi_theta || pi_ref) estimated on the samples with k2 = 1/2 (logp - ref_logp)^2, whose
          gradient (logp - ref_logp) grad logp is, in expectation over on-policy samples, the
          gradient of the reverse KL (Schulman, "Approximating KL divergence", 2020).
      (3) loss = L_pg + kl_weight * mean(k2)
    extra["kl"] is the k1 estimate mean(logp - ref_logp).
    """
    _same_shape(logp=logp, old_logp=old_logp, ref_logp=ref_logp)
    pg = ddpo_clip_loss(logp, old_logp, advantages, clip_range, adv_clip_max)  # (1)
    k = logp.float() - ref_logp.float()
    k2 = 0.5 * (k**2).mean()  # (2)
    loss = pg.loss + kl_weight * k2  # (3)
    return LossOutput(loss, pg.margin, {**pg.extra, "kl": k.detach().mean(), "kl_k2": k2.detach()})


def normalise_rewards(rewards: torch.Tensor | Sequence[float], prompts: Sequence[str], min_count: int = 2) -> torch.Tensor:
    """Per-prompt advantages for DDPO/DPOK (ddpo-pytorch `PerPromptStatTracker`), [B] float32.

    A_i = (r_i - mean_p) / (std_p + 1e-8) over the samples of prompt p (population std); a prompt
    with fewer than `min_count` samples uses the whole batch's statistics instead.
    """
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if r.shape[0] != len(prompts):
        raise ConfigError("rewards", f"{r.shape[0]} rewards for {len(prompts)} prompts")
    if r.numel() == 0:
        return r
    out = torch.empty_like(r)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    for idx in groups.values():
        sel = r[idx] if len(idx) >= min_count else r
        out[idx] = (r[idx] - sel.mean()) / (sel.std(correction=0) + 1e-8)
    return out
