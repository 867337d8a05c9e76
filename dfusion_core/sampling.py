"""DDIM with eta, classifier-free guidance and per-step log-probs (DESIGN §1).

Every sample owns a noise stream: a CPU generator seeded with its seed draws x_T, then one
standard normal z_t per step, so a sample's trajectory does not depend on its batch-mates.
The step is a free function over the stock `DDIMScheduler` (as in ddpo-pytorch's
`ddim_with_logprob.py`), not a scheduler subclass.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from dfusion_core.conditioning import Conditioning
from dfusion_core.errors import ConfigError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class NoiseStream:
    """All the randomness of a batch of samples.

    init [B, C, H, W]: x_T before scaling by `init_noise_sigma`.
    steps [B, T, C, H, W]: z_t drawn at each step, noisiest first.
    """

    init: torch.Tensor
    steps: torch.Tensor

    def __post_init__(self) -> None:
        if self.init.ndim != 4 or self.steps.ndim != 5 or self.steps.shape[0] != self.init.shape[0]:
            raise ConfigError("noise", f"expected init [B,C,H,W] and steps [B,T,C,H,W], got "
                              f"{tuple(self.init.shape)} and {tuple(self.steps.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.init.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.steps.shape[1])

    def select(self, index: Sequence[int]) -> NoiseStream:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return NoiseStream(self.init[idx], self.steps[idx])

    @staticmethod
    def cat(streams: Sequence[NoiseStream]) -> NoiseStream:
        return NoiseStream(torch.cat([s.init for s in streams]), torch.cat([s.steps for s in streams]))


def noise_from_seeds(seeds: Sequence[int], num_steps: int, shape: tuple[int, int, int]) -> NoiseStream:
    """Draw each sample's stream from its own CPU generator: x_T first, then z_t step by step."""
    inits, steps = [], []
    for seed in seeds:
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"seeds must be non-negative integers, got {seed!r}")
        g = torch.Generator(device="cpu").manual_seed(seed)
        inits.append(torch.randn(shape, generator=g))
        steps.append(torch.stack([torch.randn(shape, generator=g) for _ in range(num_steps)]))
    return NoiseStream(torch.stack(inits), torch.stack(steps))


@dataclass(frozen=True)
class StepOutput:
    """One DDIM step for a batch: prev_sample [B,C,H,W], log_prob [B], mean [B,C,H,W], std (scalar)."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one DDIM step (0-dim float32 tensors on the latents' device): what
    `ddim_step_with_logprob` computes from alpha_t and alpha_prev alone, formula steps (1) and (3).

    A chain computes them for all its steps at once (`step_scalars`) rather than once a step: the
    same operations on the same values (all but the log exactly rounded, and the log taken per
    step as before), so the same bits, and a step is left its tensor arithmetic alone.
    """

    sqrt_a_t: torch.Tensor  # sqrt(a_t)
    sqrt_one_minus_a_t: torch.Tensor  # sqrt(1 - a_t)
    sqrt_a_prev: torch.Tensor  # sqrt(a_prev)
    std: torch.Tensor  # sigma_t
    dir_coef: torch.Tensor  # sqrt(1 - a_prev - sigma_t^2), the weight of eps in the mean
    log_std: torch.Tensor  # log sigma_t


def step_scalars(
    scheduler: DDIMScheduler, timesteps: Sequence[int], eta: float, device: torch.device | str = "cpu"
) -> list[StepScalars]:
    """`StepScalars` of each of `timesteps` (on the scheduler's inference grid) for this eta, on `device`."""
    if eta <= 0:
        raise ConfigError("eta", "log-probs need a stochastic step: eta must be > 0 (eta = 0 is deterministic DDIM)")
    alphas = scheduler.alphas_cumprod
    t = torch.tensor([int(x) for x in timesteps], dtype=torch.long)
    # (1) alphas of t and the previous timestep on the inference grid
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = scheduler.final_alpha_cumprod.to(alphas.device, alphas.dtype).expand(len(t))
    a_t = alphas[t.to(alphas.device)].to(device, torch.float32)
    a_prev = torch.where((prev_t >= 0).to(alphas.device), alphas[prev_t.clamp(min=0).to(alphas.device)], final)
    a_prev = a_prev.to(device, torch.float32)
    # (3) sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    std = eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)).sqrt()
    # (2) and (4): the coefficients of x_t, eps and x0
    columns = (a_t.sqrt(), (1 - a_t).sqrt(), a_prev.sqrt(), std, (1 - a_prev - std**2).sqrt())
    return [  # the log one step at a time: a batched log may round differently
        StepScalars(sqrt_a_t=a, sqrt_one_minus_a_t=b, sqrt_a_prev=c, std=s, dir_coef=d, log_std=torch.log(s))
        for a, b, c, s, d in zip(*(column.unbind() for column in columns), strict=True)
    ]


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    eta: float,
    *,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    scalars: StepScalars | None = None,
) -> StepOutput:
    """x_t -> x_{t-1} and log p(x_{t-1} | x_t), mean over elements (DESIGN §1, DDIM eq. 12).

    Give `noise` (z_t) to sample, or `prev_sample` to score a given x_{t-1}; not both. `scalars`:
    this step's from `step_scalars` with the same eta (a chain computes them once); None computes them.
    """
    if eta <= 0:
        raise ConfigError("eta", "log-probs need a stochastic step: eta must be > 0 (eta = 0 is deterministic DDIM)")
    if (noise is None) == (prev_sample is None):
        raise ConfigError("noise", "pass exactly one of `noise` (to sample) or `prev_sample` (to score)")
    cfg = scheduler.config
    # (1) and (3): alpha_t, alpha_prev and sigma_t, as scalars of this step
    c = scalars if scalars is not None else step_scalars(scheduler, [int(timestep)], eta, sample.device)[0]
    x_t = sample.float()
    eps = model_output.float()
    # (2) predicted x_0 and epsilon
    if cfg.prediction_type == "epsilon":
        x0 = (x_t - c.sqrt_one_minus_a_t * eps) / c.sqrt_a_t
    elif cfg.prediction_type == "v_prediction":
        x0 = c.sqrt_a_t * x_t - c.sqrt_one_minus_a_t * eps
        eps = c.sqrt_a_t * eps + c.sqrt_one_minus_a_t * x_t
    else:
        raise ConfigError("prediction_type", f"unsupported scheduler prediction_type {cfg.prediction_type!r}")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    std = c.std
    # (4) mu = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps
    mean = c.sqrt_a_prev * x0 + c.dir_coef * eps
    if prev_sample is None:
        assert noise is not None
        prev_sample = mean + std * noise.to(mean.device, torch.float32)
    # (5) Gaussian log-density, averaged over all non-batch elements
    log_prob = -((prev_sample.detach().float() - mean) ** 2) / (2 * std**2) - c.log_std - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return StepOutput(prev_sample.to(sample.dtype), log_prob, mean, std)


# (x [B,C,H,W], t, step index) -> guided eps [B,C,H,W]
Denoiser = Callable[[torch.Tensor, int, int], torch.Tensor]


def cfg_denoiser(
    unet: UNet2DConditionModel,
    cond: Conditioning | torch.Tensor,
    uncond: Conditioning | torch.Tensor,
    guidance_scale: float,
    before_step: Callable[[int], None] | None = None,
) -> Denoiser:
    """eps = eps_u + w (eps_c - eps_u), one UNet call on [uncond x B, cond x B]."""
    embeds = Conditioning.cat([uncond, cond])

    def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        if before_step is not None:
            before_step(i)
        x_in = torch.cat([x, x])
        out = unet(x_in, t, **embeds.unet_kwargs(x.dtype)).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    return denoise


@dataclass(frozen=True)
class Rollout:
    """latents [B, T+1, C, H, W] (x_T..x_0), log_probs [B, T], timesteps [T]."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor


def rollout(
    denoise: Denoiser,
    scheduler: DDIMScheduler,
    noise: NoiseStream,
    eta: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Rollout:
    """Run the DDIM chain from the noise stream; `scheduler` must have its timesteps set."""
    timesteps = scheduler.timesteps
    if len(timesteps) != noise.num_steps:
        raise ConfigError("noise", f"noise has {noise.num_steps} steps, the scheduler {len(timesteps)}")
    x = (noise.init * scheduler.init_noise_sigma).to(device, dtype)
    # everything stays on the device until the end: a per-step copy to the host would
    # synchronise every step and leave the GPU idle while the next step is launched
    steps_noise = noise.steps.to(device, non_blocking=True)
    latents, log_probs = [x.float()], []
    ts = [int(t) for t in timesteps]
    scalars = step_scalars(scheduler, ts, eta, x.device)
    for i, t in enumerate(ts):
        eps = denoise(x, t, i)
        out = ddim_step_with_logprob(scheduler, eps, t, x, eta, noise=steps_noise[:, i], scalars=scalars[i])
        x = out.prev_sample
        latents.append(x.float())
        log_probs.append(out.log_prob.float())
    return Rollout(torch.stack(latents, 1).cpu(), torch.stack(log_probs, 1).cpu(), timesteps.cpu().clone())


def trajectory_log_probs(
    denoise: Denoiser,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    eta: float,
    steps: Sequence[int] | None = None,
) -> torch.Tensor:
    """log p(x_{t-1} | x_t) [B, len(steps)] of given latents [B, T+1, ...] under `denoise`.

    Differentiable when `denoise` is (the trainer calls it with adapters on and grads enabled).
    """
    timesteps = scheduler.timesteps
    if latents.shape[1] != len(timesteps) + 1:
        raise ConfigError("latents", f"trajectory has {latents.shape[1] - 1} steps, scheduler {len(timesteps)}")
    index = list(steps) if steps is not None else list(range(len(timesteps)))
    ts = [int(timesteps[i]) for i in index]
    out = []
    for i, t, c in zip(index, ts, step_scalars(scheduler, ts, eta, latents.device), strict=True):
        eps = denoise(latents[:, i], t, i)
        out.append(ddim_step_with_logprob(scheduler, eps, t, latents[:, i], eta, prev_sample=latents[:, i + 1],
                                          scalars=c).log_prob)
    return torch.stack(out, 1)


#: Prepared schedulers by (config, steps, device). Building one from its config (diffusers
#: inspects the class's signature) costs about 1 ms of CPU, a deep copy of a prepared one some
#: 250 us, `make_scheduler` with its copy some 40 us; every sample, fuse and train call makes one.
_schedulers: dict[tuple[str, int, str], DDIMScheduler] = {}
_schedulers_lock = threading.Lock()


def make_scheduler(template: DDIMScheduler, num_steps: int, device: torch.device | str = "cpu") -> DDIMScheduler:
    """A DDIM scheduler of `template`'s config with `num_steps` timesteps on `device`: a fresh copy,
    the caller's to change."""
    key = (json.dumps(dict(template.config), sort_keys=True, default=str), int(num_steps), str(torch.device(device)))
    with _schedulers_lock:
        prepared = _schedulers.get(key)
    if prepared is None:
        prepared = DDIMScheduler.from_config(template.config)
        prepared.set_timesteps(num_steps, device=device)
        # the step reads alphas every step: keep them where the latents are (no per-step copies)
        prepared.alphas_cumprod = prepared.alphas_cumprod.to(device)
        prepared.final_alpha_cumprod = prepared.final_alpha_cumprod.to(device)
        with _schedulers_lock:
            if len(_schedulers) >= 64:  # distinct (model, steps, device) a process uses: a handful
                _schedulers.clear()
            _schedulers.setdefault(key, prepared)
    # its state is its tensors (each cloned), numbers and a FrozenDict config (shared: replaced, never changed)
    fresh = copy.copy(prepared)
    for name, value in vars(prepared).items():
        if isinstance(value, torch.Tensor):
            setattr(fresh, name, value.clone())
    return fresh
