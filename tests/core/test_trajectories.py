import pytest
import torch

from dfusion_core import pipeline
from dfusion_core.errors import TrajectoryError
from dfusion_core.sampling import noise_from_seeds
from dfusion_core.trajectories import Trajectory


def test_round_trip_through_bytes(tiny, fast_sampling):
    t = pipeline.sample(tiny, ["a red and woolen dog"], fast_sampling, seeds=[42], policy_version=3)[0]
    back = Trajectory.from_bytes(t.to_bytes())
    assert back.prompt == t.prompt and back.seed == 42 and back.policy_version == 3
    assert torch.equal(back.latents, t.latents) and torch.equal(back.log_probs, t.log_probs)
    assert torch.equal(back.timesteps, t.timesteps) and torch.equal(back.image, t.image)
    assert torch.equal(back.noise().steps, t.noise().steps)


def test_explicit_noise_round_trips(tiny, fast_sampling):
    noise = noise_from_seeds([9], fast_sampling.num_steps, (4, 32, 32))
    t = pipeline.sample(tiny, ["a cat"], fast_sampling, noise=noise, decode=False)[0]
    back = Trajectory.from_bytes(t.to_bytes())
    assert back.image is None and torch.equal(back.step_noise, noise.steps[0])


@pytest.mark.parametrize("data", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "])
def test_corrupt_bytes_raise_trajectory_error(data):
    with pytest.raises(TrajectoryError):
        Trajectory.from_bytes(data)


def test_shapes_are_checked():
    with pytest.raises(TrajectoryError, match="latents"):
        Trajectory("p", 0, 0, torch.zeros(3, 4, 2, 2), torch.arange(3), torch.zeros(3), 1.0, 5.0)
