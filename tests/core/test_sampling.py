import math

import pytest
import torch

from dfusion_core import pipeline
from dfusion_core.config import SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.sampling import ddim_step_with_logprob, make_scheduler, noise_from_seeds, step_scalars


def test_same_seeds_same_trajectories(tiny, fast_sampling):
    a = pipeline.sample(tiny, ["a cat", "a dog"], fast_sampling, seeds=[3, 4], decode=False)
    b = pipeline.sample(tiny, ["a cat", "a dog"], fast_sampling, seeds=[3, 4], decode=False)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.latents, y.latents)
        assert torch.equal(x.log_probs, y.log_probs)
    c = pipeline.sample(tiny, ["a cat"], fast_sampling, seeds=[5], decode=False)
    assert (c[0].latents[-1] - a[0].latents[-1]).abs().max() > 1e-2  # a different seed differs


def test_batch_composition_does_not_change_a_sample(tiny, fast_sampling):
    alone = pipeline.sample(tiny, ["a red and woolen dog"], fast_sampling, seeds=[7], decode=False)[0]
    crowd = pipeline.sample(
        tiny, ["a cat", "a red and woolen dog", "a bus", "a tree"], fast_sampling, seeds=[1, 7, 2, 9], decode=False
    )[1]
    assert (alone.latents - crowd.latents).abs().max() < 1e-5
    assert (alone.log_probs - crowd.log_probs).abs().max() < 1e-5


def test_explicit_noise_equals_seeded_noise(tiny, fast_sampling):
    noise = noise_from_seeds([11], fast_sampling.num_steps, (4, 32, 32))
    seeded = pipeline.sample(tiny, ["a cat"], fast_sampling, seeds=[11], decode=False)[0]
    explicit = pipeline.sample(tiny, ["a cat"], fast_sampling, noise=noise, decode=False)[0]
    assert torch.equal(seeded.latents, explicit.latents)
    assert explicit.seed is None and explicit.step_noise is not None


def test_noise_stream_is_x_T_then_one_z_per_step():
    s = noise_from_seeds([5], 3, (1, 2, 2))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(s.init[0], torch.randn((1, 2, 2), generator=g))
    for i in range(3):
        assert torch.equal(s.steps[0, i], torch.randn((1, 2, 2), generator=g))


def test_log_prob_recomputation_matches_sampling(tiny, fast_sampling):
    trajs = pipeline.sample(tiny, ["a cat", "a dog eating a sandwich"], fast_sampling, seeds=[1, 2], decode=False)
    lp = pipeline.log_probs(tiny, trajs)
    assert lp.shape == (2, fast_sampling.num_steps)
    assert (lp - torch.stack([t.log_probs for t in trajs])).abs().max() < 1e-5


def test_log_prob_is_the_gaussian_density():
    sched = make_scheduler(make_scheduler_template(), 10)
    t = int(sched.timesteps[3])
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    out = ddim_step_with_logprob(sched, eps, t, x, eta=1.0, noise=z)
    # independent hand computation of DDIM eq. 12 and log N(x; mu, sigma^2)
    a_t = float(sched.alphas_cumprod[t])
    a_p = float(sched.alphas_cumprod[t - 100])
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    mu = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps
    prev = mu + sigma * z
    dens = torch.distributions.Normal(mu, sigma).log_prob(prev).mean(dim=(1, 2, 3))
    assert torch.allclose(out.prev_sample, prev, atol=1e-6)
    assert torch.allclose(out.log_prob, dens, atol=1e-5)



def test_a_chains_step_scalars_are_each_steps_own():
    """A chain computes its steps' scalars at once; each step's are the bits the step computes alone,
    so a step gives the same result with or without them (the last step included: alpha_prev is the final one)."""
    sched = make_scheduler(make_scheduler_template(), 10)
    ts = [int(t) for t in sched.timesteps]
    chain = step_scalars(sched, ts, 0.7)
    x, eps, z = (torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(s)) for s in range(3))
    for t, c in zip(ts, chain, strict=True):
        alone = step_scalars(sched, [t], 0.7)[0]
        assert all(torch.equal(getattr(c, f), getattr(alone, f)) for f in c.__dataclass_fields__)
        given = ddim_step_with_logprob(sched, eps, t, x, 0.7, noise=z, scalars=c)
        own = ddim_step_with_logprob(sched, eps, t, x, 0.7, noise=z)
        assert torch.equal(given.prev_sample, own.prev_sample) and torch.equal(given.log_prob, own.log_prob)
    with pytest.raises(ConfigError):
        step_scalars(sched, ts, 0.0)


def make_scheduler_template():
    from diffusers import DDIMScheduler

    from dfusion_core.models import SD_SCHEDULER_CONFIG

    return DDIMScheduler(**SD_SCHEDULER_CONFIG)


def test_eta_zero_with_log_probs_is_an_error(tiny):
    with pytest.raises(ConfigError, match="eta"):
        pipeline.sample(tiny, ["a cat"], SamplingConfig(num_steps=2, eta=0.0), seeds=[0], decode=False)


def test_seeds_and_noise_together_is_an_error(tiny, fast_sampling):
    noise = noise_from_seeds([1], fast_sampling.num_steps, (4, 32, 32))
    with pytest.raises(ConfigError, match="seeds"):
        pipeline.sample(tiny, ["a cat"], fast_sampling, seeds=[1], noise=noise)
    with pytest.raises(ConfigError, match="seeds"):
        pipeline.sample(tiny, ["a cat", "a dog"], fast_sampling, seeds=[1])


def test_images_are_decoded(tiny, fast_sampling):
    t = pipeline.sample(tiny, ["a cat"], fast_sampling, seeds=[0])[0]
    assert t.image is not None and t.image.dtype == torch.uint8 and t.image.shape == (64, 64, 3)


def test_made_schedulers_are_fresh_copies_of_the_same_schedule(tiny):
    """make_scheduler keeps a prepared scheduler per (config, steps, device) and hands out copies:
    each equals a scheduler built from scratch, and changing one changes no other."""
    from diffusers import DDIMScheduler

    fresh = DDIMScheduler.from_config(tiny.scheduler.config)
    fresh.set_timesteps(7)
    a, b = make_scheduler(tiny.scheduler, 7), make_scheduler(tiny.scheduler, 7)
    assert a is not b and torch.equal(a.timesteps, fresh.timesteps)
    assert torch.equal(a.alphas_cumprod, fresh.alphas_cumprod)
    a.timesteps[0] = -1
    a.set_timesteps(3)
    assert torch.equal(b.timesteps, fresh.timesteps) and torch.equal(make_scheduler(tiny.scheduler, 7).timesteps,
                                                                     fresh.timesteps)
    assert len(make_scheduler(tiny.scheduler, 3).timesteps) == 3
