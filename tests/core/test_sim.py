"""The `sim` model: real shapes through sampling, fusion and LoRA training, and time that is its waits.

Timing checks are one-sided or wide: the waits are a hard lower bound on wall time (time.sleep
never returns early), and CPU time (time.process_time, which a busy machine does not inflate) must
stay well under the waits: measured at about 1 ms a call against a 50 ms wait, bounded here at half.
"""

from __future__ import annotations

import time

import pytest
import torch

from dfusion_core import pipeline
from dfusion_core.attention import FusionAttnProcessor
from dfusion_core.blocks import attention_blocks, default_fused_blocks
from dfusion_core.config import FusionConfig, SamplingConfig, TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import map_items
from dfusion_core.lora import has_lora
from dfusion_core.presets import MODEL_PRESETS
from dfusion_core.registry import build_scorer, load_model
from dfusion_core.sim import SIM, SimTiming, build_sim, build_sim_scorer, default_timing, set_default_timing
from dfusion_core.training import Trainer, TrainPair
from services.jobspec import JobSpec

WAIT = 0.05
PROMPT = "a cat eating a sandwich"
SAMPLING = SamplingConfig(num_steps=4, batch_size=4)
FUSION = FusionConfig(**MODEL_PRESETS[SIM]["fusion"], skip_first_steps=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim():
    return build_sim(timing=SimTiming(denoiser_s=WAIT, scorer_s=WAIT))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def test_sampling_has_real_shapes_and_takes_the_waits(sim):
    trajs, wall, cpu = _timed(lambda: pipeline.sample(sim, [PROMPT] * 4, SAMPLING, seeds=[0, 1, 2, 3]))
    calls = SAMPLING.num_steps  # one batched CFG call per step
    assert [t.latents.shape for t in trajs] == [torch.Size([5, 12, 8, 8])] * 4
    assert all(t.log_probs.shape == (4,) and torch.isfinite(t.log_probs).all() for t in trajs)
    assert trajs[0].image is not None and trajs[0].image.shape == (16, 16, 3)
    assert not torch.equal(trajs[0].latents, trajs[1].latents)  # each seed its own sample
    assert wall >= calls * WAIT
    assert cpu < 0.5 * calls * WAIT, f"CPU {cpu:.3f} s for {calls} calls of {WAIT} s: not dominated by the wait"


def test_fusion_finds_its_layers_and_fuses(sim):
    assert attention_blocks(sim.unet) == ["transformer_blocks.0"]  # one block: the least CPU a call
    assert default_fused_blocks(sim.unet) == (0, 0)
    ref, base = pipeline.sample(sim, [PROMPT] * 2, SAMPLING, seeds=[5, 6])
    items = map_items(sim.tokenizer, PROMPT, ["cat", "sandwich"], [0.0, 0.0])
    (fused,) = pipeline.fuse_pairs(sim, [ref], [base], [items], FUSION)
    assert fused.target.latents.shape == base.latents.shape and fused.mask_resolution == 4
    assert fused.masks.shape == (SAMPLING.num_steps, 16, 2)
    assert fused.masks.sum() > 0, "quantile masks keep half of each item's cells"
    assert not torch.equal(fused.target.latents[-1], base.latents[-1])  # fused steps moved the target
    assert torch.equal(fused.target.latents[0], base.latents[0])  # from the base's x_T
    assert not any(isinstance(p, FusionAttnProcessor) for p in sim.unet.attn_processors.values())


def test_the_denoiser_reads_its_sample_timestep_and_caption(sim):
    """Every input reaches the output (a fusion call gives each row its own timestep), and padding
    rows of the caption are masked out, as PixArt masks T5's padding."""
    x = torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = sim.encode([PROMPT, "a red and woolen dog"]).hidden
    with torch.no_grad():
        def eps(x, t, c):
            return sim.unet(x, t, encoder_hidden_states=c).sample

        out = eps(x, 500, cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert not torch.equal(out, eps(x.flip(0), 500, cond))
        assert not torch.equal(out, eps(x, 499, cond))
        assert not torch.equal(out, eps(x, 500, cond.flip(0)))
        assert torch.equal(eps(x, torch.tensor([500, 20]), cond)[1], eps(x, 20, cond)[1])
        real = int(cond.abs().amax(dim=-1).gt(0).sum(dim=1).max())
        assert real < cond.shape[1]
        assert torch.allclose(eps(x, 500, cond[:, : real + 1]), out, atol=1e-6)  # padding adds nothing
        shown = cond.clone()
        shown[:, -1] = 1.0  # a real row where padding was: attended to
        assert not torch.allclose(eps(x, 500, shown), out)


def test_lora_training_steps_and_changes_only_the_adapter():
    model = build_sim(timing=SimTiming(denoiser_s=0.0))
    s = pipeline.sample(model, [PROMPT] * 4, SAMPLING, seeds=[0, 1, 2, 3], decode=False)
    trainer = Trainer(model, TrainingConfig(learning_rate=1e-2, batch_pairs=2))
    assert has_lora(model.unet)
    base_weights = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    metrics = trainer.train_step([TrainPair(s[0], s[1], 1.0, 0.0), TrainPair(s[2], s[3], 0.9, 0.1)])
    assert metrics.grad_norm > 0 and torch.isfinite(torch.tensor(metrics.loss))
    moved = [n for n, p in model.unet.named_parameters() if not torch.equal(p, base_weights[n])]
    assert moved and all("lora_" in n for n in moved)


def test_scorer_waits_and_is_deterministic():
    scorer = build_sim_scorer(timing=SimTiming(scorer_s=WAIT))
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scores, wall, _ = _timed(lambda: scorer.score(images, ["a", "b", "c"]))
    assert wall >= WAIT and scores.dtype == torch.float32 and scores.shape == (3,)
    assert torch.equal(scores, scorer.score(images, ["a", "b", "c"]))
    assert ((scores >= 0) & (scores <= 1)).all() and len(set(scores.tolist())) == 3
    with pytest.raises(ConfigError, match="prompts"):
        scorer.score(images, ["a"])


def test_registry_builds_by_name_with_the_process_default():
    old = default_timing()
    try:
        set_default_timing(SimTiming(denoiser_s=0.01, scorer_s=0.02))
        model = load_model(SIM)
        assert model.name == SIM and model.unet.wait_s == 0.01
        assert build_scorer(SIM).wait_s == 0.02
    finally:
        set_default_timing(old)
    with pytest.raises(ConfigError, match="denoiser_s"):
        SimTiming(denoiser_s=-1)


def test_a_sim_job_gets_its_preset():
    spec = JobSpec.model_validate({"model": SIM, "prompts": [{"text": PROMPT, "items": ["cat"],
                                                              "mask_thresholds": [0.5]}]})
    assert spec.preset == SIM and spec.scorer == SIM and spec.fusion.mask_mode == "quantile"
    assert spec.sampling.num_steps == 20  # the paper's sizes: what the sim is for
