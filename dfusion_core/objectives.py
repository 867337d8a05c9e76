"""What one micro-batch of pairs contributes to an optimizer step, per training algorithm.

Each function computes its loss on `pairs` with the trainer's model, backpropagates it scaled by
`weight` (the micro-batch's share of the step) and returns its detached metrics: loss, margin,
the loss's extras and, for the preference losses, the implicit reward (`reward_accuracy`,
`reward_margin`). `Trainer.train_step` (dfusion_core/training.py) calls them; randomness comes only
from `gen`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

import torch

from dfusion_core import losses, pipeline
from dfusion_core.bundle import DiffusionModel
from dfusion_core.config import TrainingConfig
from dfusion_core.lora import adapters_disabled
from dfusion_core.trajectories import TrainPair, Trajectory

CLIP_RANGE = 1e-4  # DDPO / DPOK ratio clip (ddpo-pytorch default)
ADV_CLIP_MAX = 5.0  # DDPO / DPOK advantage clip (ddpo-pytorch default)

StepLoss = Callable[[int, torch.Tensor], losses.LossOutput]


class Trainer(Protocol):
    """What a loss here needs of `dfusion_core.training.Trainer`, which implements it."""

    model: DiffusionModel
    config: TrainingConfig

    def autocast(self) -> AbstractContextManager[None]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def trained_steps(self, first: Trajectory, gen: torch.Generator) -> list[int]: ...


def micro_batch(trainer: Trainer, pairs: list[TrainPair], gen: torch.Generator, weight: float) -> dict[str, float]:
    algorithm = trainer.config.algorithm
    if algorithm == "trajectory_dpo":
        return trajectory_dpo(trainer, pairs, gen, weight)
    if algorithm == "diffusion_dpo":
        return diffusion_dpo(trainer, pairs, gen, weight)
    return policy_gradient(trainer, pairs, gen, weight)


def _stepwise(trainer: Trainer, trajs: list[Trajectory], steps: list[int], weight: float, loss_at: StepLoss,
              seen: Callable[[int, torch.Tensor], None] | None = None) -> dict[str, float]:
    """The trajectory losses' loop: the policy's log-probs one denoising step at a time (with grad),
    `loss_at(j, logp)` of the j-th trained step, backward at once, so only one step's graph lives.
    The loss is a mean over steps, so the summed gradients are the whole trajectory's."""
    acc: dict[str, float] = {}
    for j, step in enumerate(steps):
        with trainer.autocast():
            logp = pipeline.log_probs(trainer.model, trajs, adapters=True, steps=[step], grad=True)[:, 0]
        out = loss_at(j, logp)
        trainer.backward(out.loss * weight / len(steps))
        accumulate(acc, out, 1.0 / len(steps))
        if seen is not None:
            seen(j, logp.detach())
    return acc


def trajectory_dpo(trainer: Trainer, pairs: list[TrainPair], gen: torch.Generator, weight: float) -> dict[str, float]:
    """Winners and losers in one batch [2B]; reference log-probs once, policy step by step."""
    trajs = stack_pairs(pairs)
    steps = trainer.trained_steps(trajs[0], gen)
    b, cfg = len(pairs), trainer.config
    with trainer.autocast():
        ref = pipeline.log_probs(trainer.model, trajs, adapters=False, steps=steps).float()
    log_ratio = torch.zeros(b)  # per pair, summed over the steps: the implicit reward margin (beta = 1)

    def add_ratio(j: int, logp: torch.Tensor) -> None:
        log_ratio.add_(pair_log_ratio(logp.float(), ref[:, j], b).cpu())

    acc = _stepwise(trainer, trajs, steps, weight, seen=add_ratio, loss_at=lambda j, logp: losses.trajectory_dpo_loss(
        logp[:b], logp[b:], ref[:b, j], ref[b:, j], cfg.beta, cfg.eps))
    acc.update(reward_stats(log_ratio))
    return acc


def diffusion_dpo(trainer: Trainer, pairs: list[TrainPair], gen: torch.Generator, weight: float) -> dict[str, float]:
    """Noise x_0 of winner and loser with a shared t and eps; conditional eps-prediction MSE."""
    model, b = trainer.model, len(pairs)
    scheduler: Any = model.new_scheduler()
    unet: Any = model.unet
    x0 = torch.stack([p.winner.latents[-1] for p in pairs] + [p.loser.latents[-1] for p in pairs])
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).repeat(2)
    noise = torch.randn(x0[:b].shape, generator=gen).repeat(2, 1, 1, 1)
    x_t = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    x_t, target, t = x_t.to(model.device, model.dtype), target.to(model.device), t.to(model.device)
    cond = model.encode([p.winner.prompt for p in pairs] + [p.loser.prompt for p in pairs]).unet_kwargs()

    def errors() -> torch.Tensor:
        pred = unet(x_t, t, **cond).sample.float()
        return ((pred - target.float()) ** 2).mean(dim=(1, 2, 3))

    with torch.no_grad(), adapters_disabled(model.unet), trainer.autocast():
        ref_err = errors()
    with trainer.autocast():
        err = errors()
    out = losses.diffusion_dpo_loss(err[:b], ref_err[:b], err[b:], ref_err[b:], trainer.config.beta)
    sft = trainer.config.sft_weight
    if sft:  # D-Fusion pairs differ only inside the masks: without it the margin is won by worse denoising
        out = replace(out, loss=out.loss + sft * err[:b].mean())
    trainer.backward(out.loss * weight)
    acc: dict[str, float] = {}
    accumulate(acc, out, 1.0)
    # the implicit reward of a pair here is how much more the policy (than the reference) lowered
    # the winner's denoising error than the loser's: -d of the loss
    d = ((err[:b] - ref_err[:b]) - (err[b:] - ref_err[b:])).detach().float().cpu()
    acc.update(reward_stats(-d))
    return acc


def policy_gradient(trainer: Trainer, pairs: list[TrainPair], gen: torch.Generator, weight: float) -> dict[str, float]:
    """DDPO-clip / DPOK on both trajectories of each pair with their own rewards (a D-Fusion
    target's is its own score). Advantages are normalised per prompt in the micro-batch."""
    trajs = stack_pairs(pairs)
    rewards = [p.winner_reward for p in pairs] + [p.loser_reward for p in pairs]
    adv = losses.normalise_rewards(rewards, [t.prompt for t in trajs]).to(trainer.model.device)
    steps = trainer.trained_steps(trajs[0], gen)
    old = old_log_probs(trainer, pairs, trajs, steps)
    cfg = trainer.config
    if cfg.algorithm != "dpok":
        return _stepwise(trainer, trajs, steps, weight,
                         lambda j, logp: losses.ddpo_clip_loss(logp, old[:, j], adv, CLIP_RANGE, ADV_CLIP_MAX))
    with trainer.autocast():
        ref = pipeline.log_probs(trainer.model, trajs, adapters=False, steps=steps).float()
    return _stepwise(trainer, trajs, steps, weight, lambda j, logp: losses.dpok_loss(
        logp, old[:, j], ref[:, j], adv, cfg.kl_weight, CLIP_RANGE, ADV_CLIP_MAX))


def old_log_probs(trainer: Trainer, pairs: list[TrainPair], trajs: list[Trajectory], steps: list[int]) -> torch.Tensor:
    """PPO's "old" log-probs [2B, len(steps)]: stored on the pairs by `Trainer.with_old_log_probs`,
    else computed under the current weights."""
    stored = [p.winner_old_log_probs for p in pairs] + [p.loser_old_log_probs for p in pairs]
    if all(s is not None for s in stored):
        return torch.stack([s for s in stored if s is not None])[:, steps].to(trainer.model.device).float()
    with trainer.autocast():
        return pipeline.log_probs(trainer.model, trajs, adapters=True, steps=steps).float()


def pair_log_ratio(logp: torch.Tensor, ref: torch.Tensor, b: int) -> torch.Tensor:
    """Winners' minus losers' policy-vs-reference log-ratios: rows [winners (b); losers (b)] in, [b, ...] out."""
    diff = logp.float() - ref.float()
    return diff[:b] - diff[b:]


def reward_stats(margin: torch.Tensor) -> dict[str, float]:
    """reward_accuracy: share of pairs with a positive implicit reward margin (ties count half);
    reward_margin: its mean."""
    accuracy = (margin > 0).float().mean() + 0.5 * (margin == 0).float().mean()
    return {"reward_accuracy": float(accuracy), "reward_margin": float(margin.mean())}


def accumulate(acc: dict[str, float], out: losses.LossOutput, weight: float) -> None:
    values = {"loss": out.loss.detach(), "margin": out.margin, **out.extra}
    for key, value in values.items():
        acc[key] = acc.get(key, 0.0) + float(value) * weight


def stack_pairs(pairs: Sequence[TrainPair]) -> list[Trajectory]:
    """[winners; losers], the row layout every function here uses."""
    return [p.winner for p in pairs] + [p.loser for p in pairs]
