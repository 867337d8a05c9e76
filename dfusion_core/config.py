"""Typed hyperparameters. Pure pydantic (no torch) so the API can validate jobs with them.

Defaults are the authors' settings for SD 2.1-base (DESIGN §1). Every config is validated
when built and stored with the job's outputs.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MaskMode = Literal["absolute", "minmax", "quantile"]
PairFilter = Literal["winner_beats_loser", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SamplingConfig(_Frozen):
    """DDIM sampling."""

    num_steps: int = Field(20, ge=1, le=1000, description="DDIM steps, 1..1000")
    guidance_scale: float = Field(5.0, ge=0.0, le=50.0, description="CFG weight w; 1.0 disables CFG's effect")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta; log-probs need eta > 0")
    batch_size: int = Field(8, ge=1, le=256, description="samples per UNet call (throughput only)")


class FusionConfig(_Frozen):
    """Mask-guided self-attention fusion (which blocks and steps, the mask's resolution)."""

    blocks: tuple[int, int] | None = Field(
        None,
        description="inclusive ordinals of the UNet blocks that have attention (down, mid, up); "
        "None = the mid block and every decoder block with attention (SD 2.1: 3..6)",
    )
    skip_first_steps: int = Field(2, ge=0, le=1000, description="noisiest steps left unfused (authors: 2)")
    skip_last_steps: int = Field(0, ge=0, le=1000, description="final steps left unfused (authors: 0)")
    mask_resolution: int | None = Field(
        None, ge=1, le=512, description="side of the cross-attention maps averaged for the mask; None = latent side / 4 for a UNet, the "
        "token grid for a transformer"
    )
    mask_mode: MaskMode = Field(
        "absolute",
        description="how an item's averaged cross-attention map becomes its mask: 'absolute' = probability >= the "
        "prompt's mask_threshold for the item (the authors'); 'minmax' = (p - min) / (max - min) over the map "
        ">= mask_level; 'quantile' = p >= the map's mask_level quantile (the top 1 - mask_level of cells)",
    )
    mask_level: float = Field(
        0.5, ge=0.0, le=1.0, description="the cut for the relative modes, in [0, 1]; unused by 'absolute'"
    )

    @model_validator(mode="after")
    def _check(self) -> FusionConfig:
        if self.blocks is not None and not (0 <= self.blocks[0] <= self.blocks[1]):
            raise ValueError(f"blocks must be (lo, hi) with 0 <= lo <= hi, got {self.blocks}")
        return self

    def fused_steps(self, num_steps: int) -> range:
        """Step indices (0 = noisiest) at which fusion is on."""
        return range(self.skip_first_steps, max(self.skip_first_steps, num_steps - self.skip_last_steps))


Algorithm = Literal["trajectory_dpo", "diffusion_dpo", "ddpo", "dpok"]

#: beta per algorithm when a job leaves it out. Trajectory DPO: D3PO's 0.1 on per-step ratios
#: clamped to 1 +- eps. Diffusion-DPO: its loss is on noise-prediction errors of order 1e-3, so
#: beta is in the thousands (Wallace et al. use 2500 for SD 1.5, 5000 for SDXL). DDPO / DPOK
#: have no beta (their KL weight is `kl_weight`); the value is stored but unused.
DEFAULT_BETA: dict[str, float] = {"trajectory_dpo": 0.1, "diffusion_dpo": 2500.0, "ddpo": 0.1, "dpok": 0.1}


class TrainingConfig(_Frozen):
    """Preference training of LoRA adapters on the pairs."""

    algorithm: Algorithm = Field("trajectory_dpo", description="loss: trajectory_dpo | diffusion_dpo | ddpo | dpok")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW learning rate")
    lora_rank: int = Field(4, ge=1, le=256, description="LoRA rank on the attention projections")
    lora_alpha: float | None = Field(None, gt=0.0, description="LoRA alpha; None = rank")
    beta: float = Field(
        0.1, gt=0.0, le=100000.0,
        description="DPO temperature beta; left out = the algorithm's own default (DEFAULT_BETA)",
    )
    eps: float = Field(0.1, gt=0.0, lt=1.0, description="ratio clamp (1-eps, 1+eps)")
    kl_weight: float = Field(0.01, ge=0.0, le=100.0, description="DPOK's KL weight")
    sft_weight: float = Field(
        0.0, ge=0.0, le=1e6,
        description="Diffusion-DPO only: weight of the winners' own denoising error added to the loss, which "
        "keeps the policy from winning margins by denoising both images of close pairs worse; 0 = off",
    )
    timestep_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of denoising steps trained per pair")
    skip_last_steps: int = Field(
        0, ge=0, le=1000,
        description="final (least noisy) denoising steps left out of the trajectory losses: with few steps their "
        "log-ratios are orders of magnitude larger than the others' and drown them",
    )
    batch_pairs: int = Field(2, ge=1, le=256, description="pairs per optimizer micro-batch")
    grad_accum: int = Field(1, ge=1, le=1024, description="micro-batches per optimizer step")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradient clipping norm")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW weight decay")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="autocast dtype; LoRA weights stay fp32")
    inner_epochs: int = Field(1, ge=1, le=100, description="passes over each epoch's pairs")
    steps_per_epoch: int | None = Field(
        None, ge=1, le=100000,
        description="exact optimizer steps per epoch, cycling over the shuffled pairs (equal budgets across arms "
        "whose pair counts differ); None = inner_epochs passes",
    )
    max_passes: float | None = Field(
        None, gt=0.0, le=10000.0,
        description="at most this many passes over the pairs an epoch kept: caps the epoch's steps at "
        "ceil(max_passes * pairs / pairs per step), so that a few kept pairs are not memorised; None = no cap",
    )
    pairs: Literal["fusion", "plain"] = Field("fusion", description="D-Fusion pairs or plain best-vs-worst (ablation)")
    pair_filter: PairFilter = Field(
        "winner_beats_loser",
        description="'winner_beats_loser' trains only pairs whose winner (the fused target, or the plain winner) "
        "scored strictly above its loser, so ties and failed fusions carry no false preference; 'none' trains all",
    )

    def epoch_steps(self, kept: int) -> int:
        """Optimizer steps an epoch takes on `kept` pairs (those the pair filter kept): steps_per_epoch,
        or inner_epochs passes without it, and never more than max_passes passes."""
        if kept == 0:
            return 0
        per_step = self.batch_pairs * self.grad_accum
        steps = self.steps_per_epoch if self.steps_per_epoch is not None else math.ceil(kept / per_step) * self.inner_epochs
        if self.max_passes is None:
            return steps
        # the epsilon keeps a product that float rounding puts a hair above a whole number (1.1 * 50) on it
        return min(steps, math.ceil(self.max_passes * kept / per_step - 1e-9))

    @model_validator(mode="before")
    @classmethod
    def _algorithm_beta(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("beta") is None:
            algorithm = data.get("algorithm", "trajectory_dpo")
            data = {**data, "beta": DEFAULT_BETA.get(algorithm, DEFAULT_BETA["trajectory_dpo"])}
        return data
