"""The typed trajectory record, the preference pair the trainer takes, and the trajectory's safetensors
byte format (core defines it; services move bytes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from safetensors.torch import load, save

from dfusion_core.errors import TrajectoryError
from dfusion_core.sampling import NoiseStream, noise_from_seeds

FORMAT = "dfusion.trajectory/1"
Kind = Literal["sample", "target"]


@dataclass(frozen=True)
class Trajectory:
    """One sample's denoising chain.

    latents [T+1, C, H, W] float32: x_T .. x_0.
    timesteps [T] int64: the DDIM timesteps, noisiest first.
    log_probs [T] float32: log p(x_{t-1} | x_t) per step, mean over elements, under the network
        that made it (for a fused target: the fused network; the trainer recomputes plain ones).
    step_noise [T, C, H, W] | None: z_t, kept only when it cannot be re-drawn from `seed`.
    image [H, W, 3] uint8 | None: the decoded x_0.
    """

    prompt: str
    seed: int | None
    policy_version: int
    latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    eta: float
    guidance_scale: float
    kind: Kind = "sample"
    step_noise: torch.Tensor | None = None
    image: torch.Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        steps = int(self.timesteps.shape[0])
        if self.latents.ndim != 4 or self.latents.shape[0] != steps + 1:
            raise TrajectoryError(f"latents must be [T+1, C, H, W] with T={steps}, got {tuple(self.latents.shape)}")
        if tuple(self.log_probs.shape) != (steps,):
            raise TrajectoryError(f"log_probs must be [{steps}], got {tuple(self.log_probs.shape)}")
        if self.seed is None and self.step_noise is None:
            raise TrajectoryError("a trajectory needs its seed or its explicit step noise")
        if self.step_noise is not None and tuple(self.step_noise.shape) != (steps, *self.latents.shape[1:]):
            raise TrajectoryError(f"step_noise must be [T, C, H, W], got {tuple(self.step_noise.shape)}")

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def noise(self, init_noise_sigma: float = 1.0) -> NoiseStream:
        """This sample's noise stream [1, ...]: from its explicit noise, else re-drawn from its seed."""
        init = self.latents[0] / init_noise_sigma
        if self.step_noise is not None:
            return NoiseStream(init[None], self.step_noise[None])
        assert self.seed is not None
        return noise_from_seeds([self.seed], self.num_steps, tuple(self.latents.shape[1:]))  # type: ignore[arg-type]

    def with_image(self, image: torch.Tensor | None) -> Trajectory:
        return replace(self, image=image)

    # -- bytes -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tensors = {
            "latents": self.latents.float().contiguous(),
            "timesteps": self.timesteps.long().contiguous(),
            "log_probs": self.log_probs.float().contiguous(),
        }
        if self.step_noise is not None:
            tensors["step_noise"] = self.step_noise.float().contiguous()
        if self.image is not None:
            tensors["image"] = self.image.to(torch.uint8).contiguous()
        header = {
            "format": FORMAT,
            "prompt": self.prompt,
            "seed": self.seed,
            "policy_version": self.policy_version,
            "eta": self.eta,
            "guidance_scale": self.guidance_scale,
            "kind": self.kind,
            "meta": self.meta,
        }
        return save(tensors, metadata={"dfusion": json.dumps(header)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Trajectory:
        try:
            tensors = load(data)
            header = json.loads(_metadata(data)["dfusion"])
        except Exception as exc:  # safetensors raises several types for bad bytes
            raise TrajectoryError(f"not a dfusion trajectory: {exc}") from exc
        if header.get("format") != FORMAT:
            raise TrajectoryError(f"unknown trajectory format {header.get('format')!r}")
        try:
            return cls(
                prompt=header["prompt"],
                seed=header["seed"],
                policy_version=int(header["policy_version"]),
                latents=tensors["latents"],
                timesteps=tensors["timesteps"],
                log_probs=tensors["log_probs"],
                eta=float(header["eta"]),
                guidance_scale=float(header["guidance_scale"]),
                kind=header["kind"],
                step_noise=tensors.get("step_noise"),
                image=tensors.get("image"),
                meta=dict(header.get("meta") or {}),
            )
        except KeyError as exc:
            raise TrajectoryError(f"trajectory is missing {exc}") from exc


@dataclass(frozen=True)
class TrainPair:
    """One preference pair. D-Fusion: winner = the fused target trajectory, loser = its base
    (same prompt, x_T and z_t). Rewards are the scorer's values (used by DDPO / DPOK).

    winner_old_log_probs / loser_old_log_probs [T] | None: plain-policy log-probs from before this
    epoch's updates (PPO's "old" policy); `Trainer.train_epoch` fills them, else each step recomputes.
    """

    winner: Trajectory
    loser: Trajectory
    winner_reward: float = 0.0
    loser_reward: float = 0.0
    winner_old_log_probs: torch.Tensor | None = None
    loser_old_log_probs: torch.Tensor | None = None


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (safetensors' `load` drops it)."""
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8:
        raise TrajectoryError("truncated safetensors header")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
