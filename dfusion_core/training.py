"""The trainer: LoRA on the UNet, AdamW over the LoRA weights only, one optimizer step per call.

Randomness: every draw (timestep subsets, Diffusion-DPO's t and noise, epoch shuffles) comes
from a CPU generator seeded from (trainer seed, optimizer step), so a step's update depends only on
the weights, the optimizer state, the optimizer step and the pairs: resuming from a checkpoint
reproduces an uninterrupted run exactly. Nothing touches the global RNG.

The losses themselves, per algorithm, are in dfusion_core/objectives.py; the pair it trains on,
`TrainPair`, is in dfusion_core/trajectories.py (both below this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from dfusion_core import losses, objectives, pipeline
from dfusion_core.config import TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.lora import add_lora, has_lora, lora_parameters
from dfusion_core.models import DiffusionModel
from dfusion_core.trajectories import TrainPair, Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step did: mean loss and margin over its pairs, the pre-clip grad norm.
    `step` is the trainer's optimizer step after it (1 for a fresh trainer's first)."""

    step: int
    loss: float
    margin: float
    grad_norm: float
    num_pairs: int
    extra: dict[str, float] = field(default_factory=dict)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for step `step` of a run seeded with `seed` (independent streams per step)."""
    digest = hashlib.sha256(f"dfusion.train:{seed}:{step}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def select_steps(num_steps: int, fraction: float, generator: torch.Generator, skip_last: int = 0) -> list[int]:
    """round(fraction * T') (at least 1) denoising step indices of the first T' = T - skip_last,
    drawn without replacement, sorted."""
    usable = num_steps - skip_last
    if usable < 1:
        raise ConfigError("training.skip_last_steps", f"skipping {skip_last} of {num_steps} steps leaves none to train")
    k = max(1, min(usable, round(fraction * usable)))
    if k == usable:
        return list(range(usable))
    return sorted(torch.randperm(usable, generator=generator)[:k].tolist())


class Trainer:
    """Model + LoRA + AdamW + `optimizer_step`, the optimizer steps taken (resumed with a checkpoint)."""

    def __init__(
        self,
        model: DiffusionModel,
        config: TrainingConfig,
        *,
        seed: int = 0,
        lora_seed: int = 0,
    ) -> None:
        if config.mixed_precision == "fp16" and model.device.type != "cuda":
            raise ConfigError("mixed_precision", "fp16 autocast needs a CUDA device; use 'bf16' or 'no' on CPU")
        self.model = model
        self.config = config
        self.seed = int(seed)
        self.optimizer_step = 0
        if not has_lora(model.unet):
            add_lora(model.unet, config.lora_rank, config.lora_alpha, seed=lora_seed)
        unet: Any = model.unet  # diffusers' lazy imports hide nn.Module from type checkers
        self.parameter_names = [n for n, _ in unet.named_parameters() if "lora_" in n]
        self.parameters = lora_parameters(model.unet)
        for p in self.parameters:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None

    @property
    def pairs_per_step(self) -> int:
        return self.config.batch_pairs * self.config.grad_accum

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        mp = self.config.mixed_precision
        if mp == "no":
            yield
            return
        dtype = torch.float16 if mp == "fp16" else torch.bfloat16
        with torch.autocast(device_type=self.model.device.type, dtype=dtype):
            yield

    # -- one optimizer step ---------------------------------------------------------------
    def train_step(self, pairs: Sequence[TrainPair], *, step_seed: int | None = None) -> StepMetrics:
        """One AdamW step on the mean loss over `pairs`, in micro-batches of `batch_pairs`.

        `step_seed` overrides the generator seed (default: derived from (seed, optimizer_step)).
        """
        if not pairs:
            raise ConfigError("pairs", "train_step needs at least one pair")
        if len(pairs) > self.pairs_per_step:
            raise ConfigError("pairs", f"{len(pairs)} pairs exceed batch_pairs * grad_accum = "
                              f"{self.pairs_per_step}; split them over several steps (see train_epoch)")
        _check_pairs(pairs)
        gen = step_generator(self.seed, self.optimizer_step) if step_seed is None else \
            torch.Generator(device="cpu").manual_seed(step_seed)
        unet: Any = self.model.unet
        unet.train(False)  # no dropout: the update is a function of the data only
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        n = len(pairs)
        for start in range(0, n, self.config.batch_pairs):
            micro = list(pairs[start : start + self.config.batch_pairs])
            out = objectives.micro_batch(self, micro, gen, weight=len(micro) / n)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value * len(micro) / n
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        metrics = StepMetrics(
            step=self.optimizer_step, loss=sums.pop("loss"),
            margin=sums.pop("margin"), grad_norm=grad_norm, num_pairs=n, extra=sums,
        )
        log.info("train step %d: loss %.5f margin %.5f%s grad_norm %.4f", metrics.step, metrics.loss,
                 metrics.margin, _reward_text(metrics.extra), metrics.grad_norm)
        return metrics

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a micro-batch's share of the step's loss (through the fp16 grad scaler if any)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def trained_steps(self, first: Trajectory, gen: torch.Generator) -> list[int]:
        """The denoising steps a trajectory loss trains in this micro-batch (timestep_fraction, skip_last_steps)."""
        return select_steps(first.num_steps, self.config.timestep_fraction, gen, self.config.skip_last_steps)

    # -- an epoch ----------------------------------------------------------------------------
    def train_epoch(self, pairs: Sequence[TrainPair]) -> list[StepMetrics]:
        """Optimizer steps of `pairs_per_step` pairs each over the epoch's pairs (all prompts mixed).

        `steps_per_epoch` set: that many steps, cycling over passes of the pairs, each pass shuffled
        anew (equal step budgets whatever the pair count). Otherwise `inner_epochs` passes. Either way
        no more than `max_passes` passes (TrainingConfig.epoch_steps). For DDPO / DPOK the "old"
        log-probs are computed once, before the first update.
        """
        pairs = list(pairs)
        if not pairs:
            log.warning("no pairs to train on this epoch: no optimizer step")
            return []
        if self.config.algorithm in ("ddpo", "dpok"):
            pairs = self.with_old_log_probs(pairs)
        batches: list[list[TrainPair]] = []
        budget = self.config.epoch_steps(len(pairs))
        inner = 0
        while len(batches) < budget:
            inner += 1
            order = torch.randperm(len(pairs), generator=step_generator(self.seed + 7919 * inner, self.optimizer_step))
            shuffled = [pairs[i] for i in order.tolist()]
            batches += [shuffled[k : k + self.pairs_per_step] for k in range(0, len(shuffled), self.pairs_per_step)]
        return [self.train_step(batch) for batch in batches[:budget]]

    @torch.no_grad()
    def pair_metrics(self, pairs: Sequence[TrainPair]) -> dict[str, float]:
        """How far the current weights prefer each pair's winner over its loser, beyond the reference:
        the implicit reward margin sum_t [(log pi - log pi_ref)(winner) - (log pi - log pi_ref)(loser)]
        over the trained steps (beta = 1), as `reward_margin` (mean) and `reward_accuracy` (share of
        pairs above 0, ties counting half). For any algorithm; on pairs not yet trained on it is a
        held-out check that the learned preference generalises.
        """
        if not pairs:
            return {}
        first = pairs[0].winner
        steps = select_steps(first.num_steps, 1.0, step_generator(self.seed, 0), self.config.skip_last_steps)
        margins = []
        for start in range(0, len(pairs), self.config.batch_pairs):
            micro = list(pairs[start : start + self.config.batch_pairs])
            trajs = objectives.stack_pairs(micro)
            with self.autocast():
                logp = pipeline.log_probs(self.model, trajs, adapters=True, steps=steps).float()
                ref = pipeline.log_probs(self.model, trajs, adapters=False, steps=steps).float()
            margins.append(objectives.pair_log_ratio(logp, ref, len(micro)).sum(dim=-1).cpu())  # logp [2b, steps]
        return objectives.reward_stats(torch.cat(margins))

    def with_old_log_probs(self, pairs: Sequence[TrainPair]) -> list[TrainPair]:
        """The pairs with their plain-policy log-probs [T] under the current weights attached."""
        out = []
        for start in range(0, len(pairs), self.config.batch_pairs):
            micro = list(pairs[start : start + self.config.batch_pairs])
            b = len(micro)
            with self.autocast():
                lp = pipeline.log_probs(self.model, objectives.stack_pairs(micro))
            lp = lp.float().cpu()
            out += [_replace_old(p, lp[k], lp[b + k]) for k, p in enumerate(micro)]
        return out


def _reward_text(extra: dict[str, float]) -> str:
    """The preference losses' implicit reward in a step's log line: the share of its pairs whose
    margin is above 0 and the mean margin (`objectives.reward_stats`); '' for the others."""
    if "reward_accuracy" not in extra:
        return ""
    return f" reward_accuracy {extra['reward_accuracy']:.3f} reward_margin {extra.get('reward_margin', 0.0):.5f}"


def _replace_old(pair: TrainPair, winner: torch.Tensor, loser: torch.Tensor) -> TrainPair:
    return replace(pair, winner_old_log_probs=winner, loser_old_log_probs=loser)


def _check_pairs(pairs: Sequence[TrainPair]) -> None:
    first = pairs[0].winner
    for p in pairs:
        for t in (p.winner, p.loser):
            if t.num_steps != first.num_steps or t.eta != first.eta or t.guidance_scale != first.guidance_scale:
                raise ConfigError("pairs", "all trajectories of a step need the same num_steps, eta and guidance")
            if tuple(t.latents.shape) != tuple(first.latents.shape):
                raise ConfigError("pairs", "all trajectories of a step need the same latent shape")
        if p.winner.prompt != p.loser.prompt:
            log.warning("pair with different prompts: %r vs %r", p.winner.prompt, p.loser.prompt)


@torch.no_grad()
def trajectory_dpo_eval(trainer: Trainer, pairs: Sequence[TrainPair]) -> losses.LossOutput:
    """The trajectory-DPO loss and margin of `pairs` over all steps under the current weights (no grad)."""
    trajs = objectives.stack_pairs(pairs)
    b = len(pairs)
    with trainer.autocast():
        logp = pipeline.log_probs(trainer.model, trajs, adapters=True).float()
        ref = pipeline.log_probs(trainer.model, trajs, adapters=False).float()
    return losses.trajectory_dpo_loss(logp[:b], logp[b:], ref[:b], ref[b:], trainer.config.beta, trainer.config.eps)
