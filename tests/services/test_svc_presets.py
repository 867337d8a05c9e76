"""Model presets (dfusion_core/presets.py) under a job's own values (services/jobspec.py): a job for
`toy` gets the toy settings unless it gives its own, key by key; a `tiny` job gets none; the
validated spec holds the values used and validates to itself."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dfusion_core.config import FusionConfig, SamplingConfig, TrainingConfig
from dfusion_core.presets import MODEL_PRESETS, merge
from dfusion_core.toy import world
from services.jobspec import JobSpec

TOY_PROMPTS = [{"text": "a red striped square above a blue dotted square", "items": ["striped", "dotted"],
                "mask_thresholds": [0.5, 0.5]}]


def _toy(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"prompts": TOY_PROMPTS, "model": "toy", **fields})


def test_a_toy_job_gets_the_toy_settings() -> None:
    spec = _toy()
    assert spec.preset == "toy" and spec.scorer == "toy"
    assert spec.fusion == FusionConfig(**world.TOY_FUSION)
    assert spec.training == TrainingConfig(**world.TOY_TRAINING)
    assert spec.samples_per_prompt == world.TOY_SAMPLES_PER_PROMPT
    assert spec.sampling == SamplingConfig(**MODEL_PRESETS["toy"]["sampling"])
    assert spec.train_eval_seeds > 0  # the before/after evaluation on the job's captions is on
    assert spec.eval_prompts and all(world.is_heldout(t) for t in spec.eval_prompts)


def test_the_jobs_own_values_win_key_by_key() -> None:
    level = 0.25 if world.TOY_FUSION.get("mask_level") != 0.25 else 0.35
    spec = _toy(fusion={"mask_level": level}, training={"lora_rank": 2},
                scorer="tiny", train_eval_seeds=0, eval_seeds=3)
    assert spec.fusion == FusionConfig(**{**world.TOY_FUSION, "mask_level": level})
    assert spec.training == TrainingConfig(**{**world.TOY_TRAINING, "lora_rank": 2})
    assert (spec.scorer, spec.train_eval_seeds, spec.eval_seeds, spec.preset) == ("tiny", 0, 3, "toy")
    # a config given as a model counts with the fields it was given, not its defaults
    built = JobSpec(prompts=TOY_PROMPTS, model="toy", fusion=FusionConfig(mask_level=level))  # type: ignore[arg-type]
    assert built.fusion == spec.fusion


def test_another_algorithm_takes_none_of_the_presets_training_values() -> None:
    """The toy preset's learning rate, step budget and sft_weight were measured for Diffusion-DPO."""
    assert world.TOY_TRAINING["algorithm"] != "trajectory_dpo" and world.TOY_TRAINING["sft_weight"] > 0
    spec = _toy(training={"algorithm": "trajectory_dpo", "lora_rank": 2})
    assert spec.training == TrainingConfig(algorithm="trajectory_dpo", lora_rank=2)
    assert spec.training.beta == 0.1 and spec.training.sft_weight == 0  # the algorithm's own, as without a preset
    assert spec.fusion == FusionConfig(**world.TOY_FUSION)  # the other configs keep the preset's
    # naming the preset's own algorithm is a key like any other
    same = _toy(training={"algorithm": world.TOY_TRAINING["algorithm"], "lora_rank": 2})
    assert same.training == TrainingConfig(**{**world.TOY_TRAINING, "lora_rank": 2})


def test_a_tiny_job_gets_no_preset() -> None:
    spec = JobSpec.model_validate({"prompts": [{"text": "a cat"}], "model": "tiny", "training": {"pairs": "plain"}})
    assert spec.preset is None and spec.scorer == "tiny" and spec.train_eval_seeds == 0 and spec.eval_prompts == []
    assert (spec.fusion, spec.sampling) == (FusionConfig(), SamplingConfig())
    assert spec.training == TrainingConfig(pairs="plain")


def test_validating_a_stored_spec_again_changes_nothing() -> None:
    for spec in (_toy(fusion={"mask_level": 0.5}, training={"algorithm": "ddpo"}), _toy(preset=None),
                 JobSpec.model_validate({"prompts": [{"text": "a cat", "items": ["cat"], "mask_thresholds": [0.1]}]})):
        stored = spec.model_dump(mode="json")
        again = JobSpec.model_validate(stored)
        assert again == spec and again.model_dump(mode="json") == stored


def test_preset_null_opts_out_and_a_foreign_preset_is_refused() -> None:
    plain = _toy(preset=None)
    assert plain.preset is None and plain.scorer == "tiny" and plain.fusion == FusionConfig()
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate({"prompts": [{"text": "a cat"}], "model": "tiny", "preset": "toy",
                                "training": {"pairs": "plain"}})
    (e,) = err.value.errors()
    assert e["loc"] == ("preset",) and "'toy' does not apply to model 'tiny', which has no preset" in e["msg"]


def test_errors_still_name_the_field_under_a_preset() -> None:
    with pytest.raises(ValidationError) as err:
        _toy(fusion={"mask_level": 3})
    assert [e["loc"] for e in err.value.errors()] == [("fusion", "mask_level")]
    with pytest.raises(ValidationError) as err:
        _toy(train_eval_seeds=-1)
    assert [e["loc"] for e in err.value.errors()] == [("train_eval_seeds",)]


def test_merge() -> None:
    preset = {"scorer": "p", "fusion": {"a": 1, "b": 2}, "eval_seeds": 1}
    assert merge(preset, {"fusion": {"b": 3}, "eval_seeds": 2}) == {"scorer": "p", "fusion": {"a": 1, "b": 3},
                                                                     "eval_seeds": 2}
    assert merge(preset, {"fusion": "bad"})["fusion"] == "bad"  # left for validation to refuse
    assert preset == {"scorer": "p", "fusion": {"a": 1, "b": 2}, "eval_seeds": 1}  # not modified
