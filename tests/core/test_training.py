"""The trainer on tiny pairs: DPO lowers its loss and raises the margin; every algorithm steps."""

from __future__ import annotations

import logging

import pytest
import torch

from dfusion_core import models, pipeline
from dfusion_core.config import FusionConfig, SamplingConfig, TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import map_items
from dfusion_core.training import Trainer, TrainPair, select_steps, step_generator, trajectory_dpo_eval

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain_pairs() -> list[TrainPair]:
    model = models.build_tiny()
    s = pipeline.sample(model, ["a cat", "a cat", "a dog", "a dog"], SamplingConfig(num_steps=3, batch_size=4),
                        seeds=[0, 1, 2, 3], decode=False)
    return [TrainPair(s[0], s[1], 1.0, 0.0), TrainPair(s[2], s[3], 0.8, 0.1)]


def test_trajectory_dpo_lowers_loss_and_raises_margin(plain_pairs, caplog):
    trainer = Trainer(models.build_tiny(), TrainingConfig(learning_rate=1e-2, beta=1.0, batch_pairs=1, grad_accum=2))
    before = trajectory_dpo_eval(trainer, plain_pairs)
    assert before.loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)  # B = 0 at start
    with caplog.at_level(logging.INFO, logger="dfusion_core.training"):
        metrics = [trainer.train_step(plain_pairs) for _ in range(3)]
    # the step log shows the implicit reward: at step 1 every margin is 0 (ties count half), then it learns
    assert metrics[0].extra["reward_accuracy"] == 0.5 and metrics[0].extra["reward_margin"] == 0.0
    assert metrics[-1].extra["reward_accuracy"] == 1.0 and metrics[-1].extra["reward_margin"] > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train step")]
    assert len(lines) == 3 and all("reward_accuracy" in line and "reward_margin" in line for line in lines)
    assert f"reward_accuracy 1.000 reward_margin {metrics[-1].extra['reward_margin']:.5f}" in lines[-1]
    after = trajectory_dpo_eval(trainer, plain_pairs)
    assert after.loss.item() < before.loss.item() - 1e-3
    assert after.margin.item() > before.margin.item()
    assert [m.step for m in metrics] == [1, 2, 3] and trainer.optimizer_step == 3
    assert all(m.grad_norm > 0 and torch.isfinite(torch.tensor(m.loss)) for m in metrics)


def test_train_step_is_deterministic(plain_pairs):
    runs = []
    for _ in range(2):
        trainer = Trainer(models.build_tiny(), TrainingConfig(learning_rate=1e-2, timestep_fraction=0.5))
        trainer.train_step(plain_pairs[:1])
        runs.append([p.detach().clone() for p in trainer.parameters])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_fused_pair_trains(plain_pairs):
    model = models.build_tiny()
    s = pipeline.sample(model, ["a cat eating a sandwich"] * 2, SamplingConfig(num_steps=3), seeds=[5, 6])
    items = map_items(model.tokenizer, s[0].prompt, ["cat"], [0.03])
    (fused,) = pipeline.fuse_pairs(model, [s[0]], [s[1]], [items], FusionConfig(skip_first_steps=1), decode=False)
    trainer = Trainer(model, TrainingConfig(learning_rate=1e-2, timestep_fraction=0.34))
    metrics = trainer.train_step([TrainPair(fused.target, s[1], 1.0, 0.0)])
    assert torch.isfinite(torch.tensor([metrics.loss, metrics.margin, metrics.grad_norm])).all()


@pytest.mark.parametrize("algorithm", ["diffusion_dpo", "ddpo", "dpok"])
def test_other_algorithms_step(plain_pairs, algorithm):
    trainer = Trainer(models.build_tiny(), TrainingConfig(algorithm=algorithm, learning_rate=1e-2,
                                                         beta=500.0, timestep_fraction=0.34))
    start = [p.detach().clone() for p in trainer.parameters]
    metrics = trainer.train_step(plain_pairs)
    assert metrics.grad_norm > 0 and torch.isfinite(torch.tensor(metrics.loss))
    assert any(not torch.equal(a, p) for a, p in zip(start, trainer.parameters, strict=True))


def test_diffusion_dpo_sft_term_adds_the_winners_denoising_error(plain_pairs):
    """sft_weight w adds w x the winners' mean denoising error to the loss (same weights, same noise),
    and so changes the update; 0 leaves Diffusion-DPO as it was."""
    def step(sft: float):
        torch.manual_seed(0)
        trainer = Trainer(models.build_tiny(), TrainingConfig(algorithm="diffusion_dpo", learning_rate=1e-2,
                                                             sft_weight=sft))
        return trainer.train_step(plain_pairs, step_seed=3), [p.detach().clone() for p in trainer.parameters]

    (plain, plain_params), (sft, sft_params) = step(0.0), step(50.0)
    assert plain.margin == sft.margin  # the DPO part is the same computation
    # float32 sums of a few thousand terms: 1e-5 is ~100x their rounding at losses of order 1
    assert sft.loss == pytest.approx(plain.loss + 50.0 * plain.extra["model_err_w"], abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(plain_params, sft_params, strict=True))


def test_train_epoch_with_old_log_probs(plain_pairs):
    trainer = Trainer(models.build_tiny(), TrainingConfig(algorithm="ddpo", learning_rate=1e-2, batch_pairs=1,
                                                         timestep_fraction=0.34))
    metrics = trainer.train_epoch(plain_pairs)
    assert len(metrics) == 2 and trainer.optimizer_step == 2
    # the second step's samples were scored by the old policy: ratios move off 1
    assert metrics[1].extra["approx_kl"] > 0


def test_select_steps_and_bad_input(plain_pairs):
    g = step_generator(0, 3)
    assert select_steps(20, 0.25, g) == sorted(select_steps(20, 0.25, step_generator(0, 3)))
    assert len(select_steps(20, 0.25, g)) == 5 and select_steps(4, 1.0, g) == [0, 1, 2, 3]
    trainer = Trainer(models.build_tiny(), TrainingConfig(batch_pairs=1))
    with pytest.raises(ConfigError):
        trainer.train_step(plain_pairs)  # more pairs than batch_pairs * grad_accum
    with pytest.raises(ConfigError):
        Trainer(models.build_tiny(), TrainingConfig(mixed_precision="fp16"))  # fp16 autocast on CPU


def test_bf16_autocast_keeps_lora_fp32(plain_pairs):
    trainer = Trainer(models.build_tiny(), TrainingConfig(mixed_precision="bf16", learning_rate=1e-2,
                                                         timestep_fraction=0.34))
    metrics = trainer.train_step(plain_pairs)
    assert torch.isfinite(torch.tensor([metrics.loss, metrics.grad_norm])).all()
    assert all(p.dtype == torch.float32 for p in trainer.parameters)


def test_pair_metrics_see_the_learned_preference(plain_pairs):
    trainer = Trainer(models.build_tiny(), TrainingConfig(learning_rate=1e-2, beta=1.0, batch_pairs=2))
    before = trainer.pair_metrics(plain_pairs)
    # B = 0 at the start: policy == reference, every margin is exactly 0, a tie counts half
    assert before == {"reward_accuracy": 0.5, "reward_margin": 0.0}
    metrics = [trainer.train_step(plain_pairs) for _ in range(3)]
    after = trainer.pair_metrics(plain_pairs)
    assert after["reward_accuracy"] == 1.0 and after["reward_margin"] > 0
    # the step's own implicit-reward metrics travel in `extra`
    assert {"reward_accuracy", "reward_margin"} <= set(metrics[-1].extra)
    assert metrics[-1].extra["reward_margin"] > 0


def test_steps_per_epoch_is_an_exact_budget(plain_pairs):
    trainer = Trainer(models.build_tiny(), TrainingConfig(learning_rate=1e-3, batch_pairs=1, steps_per_epoch=5,
                                                          timestep_fraction=0.34))
    metrics = trainer.train_epoch(plain_pairs)  # 2 pairs, 1 per step: passes repeat until 5 steps
    assert len(metrics) == 5 and [m.num_pairs for m in metrics] == [1] * 5
    assert trainer.train_epoch([]) == [] and trainer.optimizer_step == 5  # no pairs: no step, no error


def test_max_passes_caps_the_epoch_where_few_pairs_were_kept(plain_pairs):
    config = TrainingConfig(learning_rate=1e-3, batch_pairs=1, steps_per_epoch=5, max_passes=1.5, timestep_fraction=0.34)
    trainer = Trainer(models.build_tiny(), config)
    assert len(trainer.train_epoch(plain_pairs)) == 3  # 2 pairs: 1.5 passes of 1 pair a step, not 5 steps
    # many pairs: the step budget binds; without steps_per_epoch, inner_epochs passes under the same cap
    assert config.epoch_steps(100) == 5 and config.epoch_steps(0) == 0
    assert TrainingConfig(batch_pairs=4, inner_epochs=3, max_passes=2).epoch_steps(10) == 5  # 3 passes = 9 > ceil(2 * 10 / 4)
    assert TrainingConfig(batch_pairs=4, inner_epochs=3).epoch_steps(10) == 9
    assert TrainingConfig(batch_pairs=1, steps_per_epoch=99, max_passes=1.1).epoch_steps(50) == 55  # 1.1 * 50 is 55.00000000000001


def test_skip_last_steps_leaves_the_final_steps_out():
    g = step_generator(0, 0)
    assert select_steps(10, 1.0, g, skip_last=3) == list(range(7))
    assert all(s < 8 for _ in range(20) for s in select_steps(10, 0.5, g, skip_last=2))
    with pytest.raises(ConfigError, match="skip_last_steps"):
        select_steps(4, 1.0, g, skip_last=4)


def test_each_algorithm_gets_its_own_beta():
    assert TrainingConfig().beta == 0.1
    assert TrainingConfig(algorithm="diffusion_dpo").beta == 2500.0
    assert TrainingConfig(algorithm="diffusion_dpo", beta=300.0).beta == 300.0
    # what a job body (JSON) says explicitly wins; null means "the algorithm's default"
    assert TrainingConfig.model_validate({"algorithm": "diffusion_dpo", "beta": None}).beta == 2500.0
