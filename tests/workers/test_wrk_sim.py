"""A whole `sim` job embedded: sampling, fusion, scoring and LoRA training all run, and the job's wall
time is its waits, not CPU.

The wall time is bounded below by the waits the run counted (time.sleep never returns early). CPU
time (time.process_time: a loaded machine does not inflate it) measured 0.47 s against 4.2 s of
waits (53 calls of 80 ms) on 2 busy cores; the bound, half the waits, leaves 4x room.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from dfusion_core import sim
from dfusion_core.trajectories import unpack_trajectories
from services.jobspec import JobSpec
from workers.embedded import run_embedded

WAIT = 0.08
SPEC = {
    "model": "sim", "samples_per_prompt": 4, "epochs": 1, "sampling": {"num_steps": 6, "batch_size": 4},
    "prompts": [{"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.5, 0.5]}],
    "eval_prompts": ["a dog"], "eval_seeds": 1, "training": {"pair_filter": "none"},
}


@pytest.fixture
def sim_waits():
    old, threads = sim.default_timing(), torch.get_num_threads()
    sim.set_default_timing(sim.SimTiming(denoiser_s=WAIT, scorer_s=WAIT))
    torch.set_num_threads(1)
    yield
    sim.set_default_timing(old)
    torch.set_num_threads(threads)


def test_a_sim_job_runs_embedded_and_its_time_is_the_waits(tmp_path: Path, sim_waits) -> None:
    spec = JobSpec.model_validate(SPEC)
    before = sim.wait_counts()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_embedded(spec, tmp_path, job_id="simjob")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    waits = {k: v - before[k] for k, v in sim.wait_counts().items()}

    assert (result.status, result.error) == ("succeeded", None)
    assert result.counts == {"samples": 4, "scored": 4, "pairs": 2, "trained_steps": 1}
    assert (tmp_path / "checkpoints" / "1" / "pytorch_lora_weights.safetensors").is_file()
    bundles = list((tmp_path / "e0" / "pairs").glob("*.safetensors"))  # both pairs are one fuse chunk
    assert [b.name for b in bundles] == ["e0-p000-c000.targets.safetensors"]
    assert sorted(unpack_trajectories(bundles[0].read_bytes())) == ["e0-p000-k000", "e0-p000-k001"]
    # sampling (6 calls), fusion (7), held-out and training calls: dozens of waits
    assert waits["denoiser"] >= 6 + 7 and waits["scorer"] >= 2
    waited = WAIT * (waits["denoiser"] + waits["scorer"])
    assert wall >= waited
    assert cpu < 0.5 * waited, f"CPU {cpu:.2f} s against {waited:.2f} s of waits: not dominated by the wait"
