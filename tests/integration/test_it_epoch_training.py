"""Pairs that carry preference, trained one unit per epoch: tiny jobs run embedded (the same stage
functions the Celery workers run, in one process), with a spy on the trainer's optimizer steps.

- a pair record carries its target's own score: the job's scorer on the stored target image;
- the pair filter trains only pairs whose target beats its base (ties and losses are dropped),
  and an epoch whose filter keeps nothing takes no step but still publishes its version;
- train(e) mixes the epoch's prompts in one optimizer step;
- DDPO's rewards are the targets' own scores, not their references'.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from dfusion_core.training import Trainer
from services.jobspec import JobSpec
from services.records import PairRecord
from workers.embedded import RunResult, run_embedded
from workers.images import png_tensor
from workers.runtime import Runtime

PROMPTS = [
    {"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.03, 0.005]},
    {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]},
]


def _spec(**training: Any) -> JobSpec:
    return JobSpec.model_validate({
        "prompts": PROMPTS, "model": "tiny", "samples_per_prompt": 4, "epochs": 1, "seed": 5,
        "sampling": {"num_steps": 4}, "training": training, "eval_prompts": ["a horse"], "eval_seeds": 1,
    })


@dataclass
class Run:
    result: RunResult
    pairs: list[PairRecord]
    epoch_inputs: list[list[Any]] = field(default_factory=list)  # the pairs train_epoch got, per call
    steps: list[list[Any]] = field(default_factory=list)  # the pairs of each optimizer step

    @property
    def out(self) -> Path:
        return self.result.out


def _run(out: Path, spec: JobSpec, scorer: Any = None) -> Run:
    """Run `spec` embedded, recording what the trainer was given; `scorer` replaces the job's scorer."""
    epoch_inputs: list[list[Any]] = []
    steps: list[list[Any]] = []
    train_epoch, train_step = Trainer.train_epoch, Trainer.train_step

    def spy_epoch(self: Trainer, pairs: Any) -> Any:
        epoch_inputs.append(list(pairs))
        return train_epoch(self, pairs)

    def spy_step(self: Trainer, pairs: Any, **kw: Any) -> Any:
        steps.append(list(pairs))
        return train_step(self, pairs, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", spy_epoch)
        mp.setattr(Trainer, "train_step", spy_step)
        if scorer is not None:
            mp.setattr(Runtime, "scorer", lambda self, name: scorer)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the machine is shared: keep to one core
        try:
            result = run_embedded(spec, out)
        finally:
            torch.set_num_threads(threads)
    assert result.status == "succeeded", result.error
    pairs = [PairRecord.load(p) for p in json.loads((out / "pairs.json").read_text())]
    return Run(result, pairs, epoch_inputs, steps)


@pytest.fixture(scope="module")
def ddpo_run(tmp_path_factory) -> Run:
    """D-Fusion pairs, DDPO, every pair trained, all four pairs of both prompts in one step."""
    return _run(tmp_path_factory.mktemp("ddpo"), _spec(algorithm="ddpo", pair_filter="none", batch_pairs=4))


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory) -> Run:
    """D-Fusion pairs, trajectory DPO, the default filter (winner_beats_loser)."""
    return _run(tmp_path_factory.mktemp("filtered"), _spec())


class _ConstantScorer:
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.full((len(prompts),), 0.5)


def test_pair_records_carry_the_scorer_on_their_own_target_image(ddpo_run: Run) -> None:
    scorer = Runtime(models={}, device=torch.device("cpu")).scorer("tiny")
    assert len(ddpo_run.pairs) == 4
    for p in ddpo_run.pairs:
        assert p.target_score is not None and p.fused
        image = png_tensor((ddpo_run.out / p.target_image_key.removeprefix("jobs/local/")).read_bytes())
        own = float(scorer.score(image[None], [p.prompt])[0])
        assert p.target_score == pytest.approx(own, abs=1e-6), p.id
    # a fused target is its own image: its score is not its reference's
    assert any(abs(p.target_score - p.reference_score) > 1e-6 for p in ddpo_run.pairs)  # type: ignore[operator]


def test_one_train_unit_per_epoch_mixes_prompts_in_a_step(ddpo_run: Run) -> None:
    assert len(ddpo_run.epoch_inputs) == 1  # one unit for the epoch, not one per prompt
    assert len(ddpo_run.steps) == 1
    assert {pair.winner.prompt for pair in ddpo_run.steps[0]} == {p["text"] for p in PROMPTS}
    assert ddpo_run.result.counts["trained_steps"] == 1


def test_ddpo_rewards_are_the_targets_own_scores(ddpo_run: Run) -> None:
    given = sorted((tp.winner_reward, tp.loser_reward) for tp in ddpo_run.epoch_inputs[0])
    assert given == sorted((p.target_score, p.base_score) for p in ddpo_run.pairs)
    assert all(p.trained for p in ddpo_run.pairs)  # pair_filter 'none'


def test_epoch_metrics_describe_the_pairs_and_the_steps(ddpo_run: Run) -> None:
    [m] = ddpo_run.result.metrics
    gains = [p.target_score - p.base_score for p in ddpo_run.pairs]  # type: ignore[operator]
    assert (m["epoch"], m["policy_version"], m["optimizer_steps"]) == (0, 1, 1)
    assert (m["pairs_total"], m["pairs_trained"]) == (4, 4)
    assert m["pair_passes"] == 1.0  # one step of all 4 pairs
    assert m["target_win_rate"] == pytest.approx(sum(g > 0 for g in gains) / 4)
    assert m["mean_target_gain"] == pytest.approx(sum(gains) / 4)
    assert m["heldout_score"] is not None and m["heldout_score_base"] is not None
    assert any(k.startswith("heldout_pairs_") for k in m), m  # Trainer.pair_metrics before training
    step_metrics = json.loads((ddpo_run.out / "trainer" / "e0" / "metrics.json").read_text())
    for key, value in step_metrics[0]["extra"].items():  # the steps' extra metrics, averaged per epoch
        assert m[key] == pytest.approx(value)


def test_filter_trains_only_targets_that_beat_their_base(filtered_run: Run) -> None:
    kept = [p for p in filtered_run.pairs if p.target_score > p.base_score]  # type: ignore[operator]
    assert [p.trained for p in filtered_run.pairs] == [p in kept for p in filtered_run.pairs]
    [m] = filtered_run.result.metrics
    assert m["pairs_trained"] == len(kept) and m["pairs_total"] == 4
    if kept:
        [given] = filtered_run.epoch_inputs
        assert sorted(tp.winner_reward for tp in given) == sorted(p.target_score for p in kept)
    assert m["optimizer_steps"] == len(filtered_run.steps) == -(-len(kept) // 2)


def test_ties_are_dropped_and_an_empty_epoch_still_publishes(tmp_path: Path, caplog) -> None:
    """Plain pairs under a constant scorer: every winner ties its loser, so nothing is trained."""
    with caplog.at_level(logging.WARNING, logger="workers.stages"):
        run = _run(tmp_path / "ties", _spec(pairs="plain"), scorer=_ConstantScorer())
    assert run.pairs and all(p.target_score == p.base_score == 0.5 and p.trained is False for p in run.pairs)
    assert run.steps == [] and run.result.counts["trained_steps"] == 0
    [m] = run.result.metrics
    assert (m["optimizer_steps"], m["pairs_trained"], m["target_win_rate"], m["loss"]) == (0, 0, 0.0, None)
    assert m["pair_passes"] is None
    assert (run.out / "checkpoints" / "1" / "pytorch_lora_weights.safetensors").exists()
    assert "kept none of 4 pairs" in caplog.text
