import json

import pytest
import torch
from safetensors.torch import load, save

from dfusion_core import pipeline
from dfusion_core.errors import ConfigError, TrajectoryError
from dfusion_core.sampling import noise_from_seeds
from dfusion_core.trajectories import Trajectory, pack_trajectories, unpack_trajectories


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


# -- bundles ---------------------------------------------------------------------------------------
def _hand_made(seed: int | None = 1, *, noise: bool = False, image: bool = False, steps: int = 3) -> Trajectory:
    g = torch.Generator().manual_seed(steps + (seed or 0))
    return Trajectory(
        prompt=f"a cat {seed}", seed=seed, policy_version=2, latents=torch.randn(steps + 1, 4, 2, 2, generator=g),
        timesteps=torch.arange(steps, 0, -1), log_probs=torch.randn(steps, generator=g), eta=1.0, guidance_scale=5.0,
        kind="target" if noise else "sample", meta={"pair": "k000"} if noise else {},
        step_noise=torch.randn(steps, 4, 2, 2, generator=g) if noise else None,
        image=torch.randint(0, 256, (2, 2, 3), dtype=torch.uint8, generator=g) if image else None,
    )


def _same(a: Trajectory, b: Trajectory) -> bool:
    fields = ("prompt", "seed", "policy_version", "eta", "guidance_scale", "kind", "meta")
    tensors = ("latents", "timesteps", "log_probs", "step_noise", "image")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and all(_equal(getattr(a, t), getattr(b, t)) for t in tensors)


def _equal(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
    return x is None and y is None or x is not None and y is not None and x.dtype == y.dtype and torch.equal(x, y)


def test_a_bundle_round_trips_every_member_with_its_optional_tensors():
    members = {"e0-p000-s000": _hand_made(1), "e0-p000-s001": _hand_made(None, noise=True),
               "e0-p000-s002": _hand_made(3, image=True), "e0-p000-s003": _hand_made(None, noise=True, image=True, steps=5)}
    data = pack_trajectories(members)
    back = unpack_trajectories(data)
    assert list(back) == list(members)
    assert all(_same(back[k], t) for k, t in members.items())
    assert pack_trajectories(members) == data  # a retried task writes identical bytes


def test_a_sampled_batch_packs_although_its_trajectories_share_memory(tiny, fast_sampling):
    batch = pipeline.sample(tiny, ["a cat", "a dog"], fast_sampling, seeds=[1, 2], policy_version=0)
    back = unpack_trajectories(pack_trajectories({"a": batch[0], "b": batch[1]}))
    assert _same(back["a"], batch[0]) and _same(back["b"], batch[1])


def test_a_bundle_s_member_holds_what_a_single_trajectory_file_holds():
    t = _hand_made(7, image=True)
    single = load(t.to_bytes())
    bundled = load(pack_trajectories({"m": t}))
    assert single.keys() == {k.removeprefix("m/") for k in bundled}
    assert all(torch.equal(single[k], bundled[f"m/{k}"]) for k in single)


def test_a_member_missing_a_tensor_is_named():
    data = pack_trajectories({"e0-p000-s000": _hand_made(1), "e0-p000-s001": _hand_made(2)})
    tensors, meta = load(data), _metadata_of(data)
    del tensors["e0-p000-s001/log_probs"]
    with pytest.raises(TrajectoryError, match=r"member 'e0-p000-s001': trajectory is missing 'log_probs'"):
        unpack_trajectories(save(tensors, metadata=meta))


def test_a_bad_member_header_or_stray_tensor_is_named():
    data = pack_trajectories({"m0": _hand_made(1)})
    tensors, meta = load(data), _metadata_of(data)
    header = json.loads(meta["dfusion"])
    header["members"]["m0"]["format"] = "dfusion.trajectory/0"
    with pytest.raises(TrajectoryError, match=r"member 'm0': unknown trajectory format 'dfusion.trajectory/0'"):
        unpack_trajectories(save(tensors, metadata={"dfusion": json.dumps(header)}))
    with pytest.raises(TrajectoryError, match=r"tensor 'm1/latents' belongs to no member"):
        unpack_trajectories(save({**tensors, "m1/latents": torch.zeros(1)}, metadata=meta))


@pytest.mark.parametrize("data", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "])
def test_corrupt_bytes_raise_for_a_bundle(data):
    with pytest.raises(TrajectoryError, match="not a dfusion trajectory bundle"):
        unpack_trajectories(data)


def test_the_two_formats_are_not_mistaken_for_each_other():
    t = _hand_made(1)
    with pytest.raises(TrajectoryError, match="unknown trajectory bundle format 'dfusion.trajectory/1'"):
        unpack_trajectories(t.to_bytes())
    with pytest.raises(TrajectoryError, match="unknown trajectory format 'dfusion.trajectories/1'"):
        Trajectory.from_bytes(pack_trajectories({"m": t}))


@pytest.mark.parametrize("name", ["", "a/b"])
def test_a_member_name_that_cannot_name_tensors_is_refused(name):
    with pytest.raises(ConfigError, match="members"):
        pack_trajectories({name: _hand_made(1)})


def _metadata_of(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]
