"""Trajectory refs (`key#member` of a bundle, or a plain key of a job stored before bundles) and
`load_trajectories`: each object is fetched once however many of its members are named, and a
legacy single-trajectory object still loads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from dfusion_core.errors import ConfigError, TrajectoryError
from dfusion_core.storage import LocalDirStore, check_key
from dfusion_core.trajectories import Trajectory, pack_trajectories
from services.state.memory import MemoryJobStore
from workers import keys
from workers.stages import Context
from workers.stages.common import load_trajectories

BUNDLE = keys.sample_bundle_key("j1", 0, 1, 2)
LEGACY = "jobs/j1/e0/samples/e0-p001-s009.safetensors"  # one whole trajectory, as stored before bundles


class CountingStore(LocalDirStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: Counter[str] = Counter()

    def get(self, key: str) -> bytes:
        self.gets[key] += 1
        return super().get(key)


def _traj(seed: int) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    return Trajectory(prompt="a cat", seed=seed, policy_version=0, latents=torch.randn(3, 4, 2, 2, generator=g),
                      timesteps=torch.tensor([2, 1]), log_probs=torch.randn(2, generator=g), eta=1.0,
                      guidance_scale=5.0, image=torch.full((2, 2, 3), seed, dtype=torch.uint8))


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    store = CountingStore(tmp_path)
    store.put(BUNDLE, pack_trajectories({f"e0-p001-s{i:03d}": _traj(i) for i in range(3)}))
    store.put(LEGACY, _traj(9).to_bytes())
    return Context(state=MemoryJobStore(), store=store, dispatch=lambda *a, **k: None, runtime=None)  # type: ignore[arg-type]


def test_a_ref_joins_and_splits():
    ref = keys.member_ref(BUNDLE, "e0-p001-s000")
    assert ref == "jobs/j1/e0/samples/e0-p001-b002.safetensors#e0-p001-s000"
    assert keys.split_ref(ref) == (BUNDLE, "e0-p001-s000")
    assert keys.split_ref(LEGACY) == (LEGACY, None)
    for bad in (lambda: keys.member_ref(BUNDLE, ""), lambda: keys.member_ref("a#b", "m"),
                lambda: keys.split_ref(f"{BUNDLE}#")):
        with pytest.raises(ValueError, match="#"):
            bad()


def test_bundle_keys_are_per_task_and_valid_object_keys():
    assert keys.target_bundle_key("j1", 3, 4, 5) == "jobs/j1/e3/pairs/e3-p004-c005.targets.safetensors"
    assert check_key(BUNDLE) == BUNDLE and check_key(keys.target_bundle_key("j1", 0, 0, 0))


def test_an_object_key_never_holds_a_ref_separator(tmp_path: Path):
    with pytest.raises(ConfigError, match="'#'"):
        check_key(keys.member_ref(BUNDLE, "e0-p001-s000"))
    with pytest.raises(ConfigError, match="'#'"):
        LocalDirStore(tmp_path).put("jobs/j1/a#b", b"x")


def test_each_object_is_fetched_once_for_several_members_and_a_legacy_key_still_loads(ctx: Context):
    names = ["e0-p001-s002", "legacy", "e0-p001-s000", "e0-p001-s002"]
    refs = [LEGACY if n == "legacy" else keys.member_ref(BUNDLE, n) for n in names]
    trajs = load_trajectories(ctx, refs)
    assert ctx.store.gets == {BUNDLE: 1, LEGACY: 1}  # type: ignore[attr-defined]
    assert [t.seed for t in trajs] == [2, 9, 0, 2]
    assert torch.equal(trajs[1].latents, _traj(9).latents) and torch.equal(trajs[0].image, _traj(2).image)
    assert trajs[0] is trajs[3]  # decoded once


def test_a_missing_member_names_the_object_and_the_member(ctx: Context):
    with pytest.raises(TrajectoryError, match=rf"object {BUNDLE}: the bundle has no member 'e0-p001-s007'"):
        load_trajectories(ctx, [keys.member_ref(BUNDLE, "e0-p001-s000"), keys.member_ref(BUNDLE, "e0-p001-s007")])


def test_a_corrupt_object_or_member_is_named(ctx: Context):
    ctx.store.put(LEGACY, b"\x00not a safetensors file")
    with pytest.raises(TrajectoryError, match=rf"object {LEGACY}: not a dfusion trajectory"):
        load_trajectories(ctx, [LEGACY])
    bad = _traj(1)
    object.__setattr__(bad, "log_probs", torch.zeros(5))  # past __post_init__: as a damaged writer would store it
    ctx.store.put(BUNDLE, pack_trajectories({"e0-p001-s000": _traj(0), "e0-p001-s001": bad}))
    with pytest.raises(TrajectoryError, match=rf"object {BUNDLE}: member 'e0-p001-s001': log_probs must be"):
        load_trajectories(ctx, [keys.member_ref(BUNDLE, "e0-p001-s000")])
    with pytest.raises(TrajectoryError, match=rf"object {BUNDLE}: unknown trajectory format"):
        load_trajectories(ctx, [BUNDLE])  # a bundle named by its plain key


def _scored_job(tmp_path: Path, bundled: bool) -> tuple[Context, str, list[str]]:
    """A sim job of one prompt whose one sample batch is stored, as now (a bundle and PNGs) or as a
    version before bundles stored it (a trajectory object and a PNG per sample), not yet scored."""
    from services.jobspec import JobSpec
    from services.records import SampleRecord
    from services.state import JobStatus
    from workers.images import png_bytes
    from workers.runtime import Runtime

    spec = JobSpec.model_validate({"model": "sim", "scorer": "sim", "samples_per_prompt": 4, "sampling": {"batch_size": 4},
                                   "prompts": [{"text": "a cat", "items": ["cat"], "mask_thresholds": [0.5]}]})
    state, store = MemoryJobStore(), LocalDirStore(tmp_path)
    state.create_job("j1", "acme", spec.model_dump(mode="json"))
    state.set_status("j1", JobStatus.RUNNING)
    sids = [keys.sample_id(0, 0, i) for i in range(4)]
    trajs = {sid: _traj(40 * i + 7) for i, sid in enumerate(sids)}  # images of different brightness
    bundle = keys.sample_bundle_key("j1", 0, 0, 0)
    if bundled:
        store.put(bundle, pack_trajectories(trajs))
    for i, (sid, t) in enumerate(trajs.items()):
        legacy = f"jobs/j1/e0/samples/{sid}.safetensors"
        if not bundled:
            store.put(legacy, t.to_bytes())
        assert t.image is not None
        store.put(keys.image_key("j1", sid), png_bytes(t.image))
        state.put_sample("j1", sid, SampleRecord(
            id=sid, epoch=0, prompt_index=0, index=i, seed=t.seed or 0, policy_version=0, prompt="a cat",
            trajectory_key=keys.member_ref(bundle, sid) if bundled else legacy, image_key=keys.image_key("j1", sid),
        ).dump())
    ctx = Context(state=state, store=store, dispatch=lambda *a, **k: None, runtime=Runtime(models={}))
    return ctx, "j1", sids


@pytest.mark.parametrize("bundled", [True, False])
def test_the_score_stage_reads_the_bundle_or_the_pngs_of_a_batch_stored_before_bundles(tmp_path: Path, bundled: bool):
    from workers.stages import score

    ctx, job_id, sids = _scored_job(tmp_path, bundled)
    score(ctx, job_id, 0, 0, 0)
    scores = [ctx.state.get_sample(job_id, sid)["score"] for sid in sids]  # type: ignore[index]
    # the sim scorer is mean brightness (float32: 1e-6 is rounding), whichever objects held the images
    assert scores == pytest.approx([(40 * i + 7) / 255 for i in range(4)], abs=1e-6)
