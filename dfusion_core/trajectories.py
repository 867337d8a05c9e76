"""The typed trajectory record, the preference pair the trainer takes, and the safetensors byte
formats (core defines them; services move bytes): one trajectory ("dfusion.trajectory/1",
`Trajectory.to_bytes`) or a bundle of named ones ("dfusion.trajectories/1", `pack_trajectories`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from safetensors.torch import load, save

from dfusion_core.errors import ConfigError, TrajectoryError
from dfusion_core.sampling import NoiseStream, noise_from_seeds

FORMAT = "dfusion.trajectory/1"
BUNDLE_FORMAT = "dfusion.trajectories/1"
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
        tensors, header = _encode(self)
        return save(tensors, metadata={"dfusion": json.dumps(header)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Trajectory:
        tensors, header = _read(data, "trajectory")
        return _decode(header, tensors)


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


# -- bundles ---------------------------------------------------------------------------------------
def pack_trajectories(members: Mapping[str, Trajectory]) -> bytes:
    """Several trajectories as one safetensors file, so a task stores (and the next one fetches) one
    object instead of one per trajectory (each object is a round trip and a request the store serves,
    whatever its size). Tensors are named `<member>/<tensor>`; the `dfusion` metadata is
    {"format": BUNDLE_FORMAT, "members": {member: the header `Trajectory.to_bytes` writes}}."""
    tensors: dict[str, torch.Tensor] = {}
    headers: dict[str, dict[str, Any]] = {}
    storages: set[int] = set()
    for name, traj in members.items():
        if not name or "/" in name:
            raise ConfigError("members", f"a bundle member's name must be non-empty and without '/', got {name!r}")
        own, headers[name] = _encode(traj)
        for k, v in own.items():
            # one batch's trajectories are views of its tensors, and safetensors refuses shared memory
            ptr = v.untyped_storage().data_ptr()
            tensors[f"{name}/{k}"] = v.clone() if ptr in storages else v
            storages.add(ptr)
    return save(tensors, metadata={"dfusion": json.dumps({"format": BUNDLE_FORMAT, "members": headers})})


def unpack_trajectories(data: bytes) -> dict[str, Trajectory]:
    """Every member of a bundle `pack_trajectories` wrote, by name; a bad member's error names it."""
    tensors, header = _read(data, "trajectory bundle")
    if header.get("format") != BUNDLE_FORMAT:
        raise TrajectoryError(f"unknown trajectory bundle format {header.get('format')!r} (expected {BUNDLE_FORMAT!r})")
    members = header.get("members")
    if not isinstance(members, dict):
        raise TrajectoryError("trajectory bundle has no members table")
    own: dict[str, dict[str, torch.Tensor]] = {name: {} for name in members}
    for full, tensor in tensors.items():
        name, _, tensor_name = full.partition("/")
        if name not in own:
            raise TrajectoryError(f"trajectory bundle tensor {full!r} belongs to no member")
        own[name][tensor_name] = tensor
    out = {}
    for name, member_header in members.items():
        try:
            out[name] = _decode(member_header, own[name])
        except TrajectoryError as exc:
            raise TrajectoryError(f"member {name!r}: {exc}") from exc
    return out


# -- the shared halves of both formats -------------------------------------------------------------
def _encode(traj: Trajectory) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A trajectory's tensors and its JSON header: a single file's whole content, a bundle member's."""
    tensors = {
        "latents": traj.latents.float().contiguous(),
        "timesteps": traj.timesteps.long().contiguous(),
        "log_probs": traj.log_probs.float().contiguous(),
    }
    if traj.step_noise is not None:
        tensors["step_noise"] = traj.step_noise.float().contiguous()
    if traj.image is not None:
        tensors["image"] = traj.image.to(torch.uint8).contiguous()
    header = {
        "format": FORMAT,
        "prompt": traj.prompt,
        "seed": traj.seed,
        "policy_version": traj.policy_version,
        "eta": traj.eta,
        "guidance_scale": traj.guidance_scale,
        "kind": traj.kind,
        "meta": traj.meta,
    }
    return tensors, header


def _decode(header: Any, tensors: dict[str, torch.Tensor]) -> Trajectory:
    """The trajectory `_encode` split into `tensors` and `header`."""
    fmt = header.get("format") if isinstance(header, dict) else None
    if fmt != FORMAT:
        raise TrajectoryError(f"unknown trajectory format {fmt!r}")
    try:
        return Trajectory(
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


def _read(data: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the `dfusion` metadata object of safetensors bytes; bad bytes raise, naming `what`."""
    try:
        tensors = load(data)
        header = json.loads(_metadata(data)["dfusion"])
        if not isinstance(header, dict):
            raise TypeError(f"its metadata is a {type(header).__name__}, not an object")
    except Exception as exc:  # safetensors raises several types for bad bytes
        raise TrajectoryError(f"not a dfusion {what}: {exc}") from exc
    return tensors, header


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (safetensors' `load` drops it)."""
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8:
        raise TrajectoryError("truncated safetensors header")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
