"""`dfusion run` and `dfusion submit` build the same job from the same flags (cli/jobargs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.jobargs import job_body, read_prompts
from cli.main import build_parser
from cli.run import build_spec
from cli.submit import submit_body
from dfusion_core.errors import ConfigError
from services.jobspec import JobSpec

FLAGS = ["--samples-per-prompt", "4", "--epochs", "2", "--steps", "3", "--pairs", "plain",
         "--algorithm", "ddpo", "--seed", "7", "--train-eval-seeds", "3"]
PROMPTS = [{"text": "a cat", "items": ["cat"], "mask_thresholds": [0.1]}]


def test_run_and_submit_build_the_same_job() -> None:
    run_args = build_parser().parse_args(["run", "p.jsonl", *FLAGS])
    submit_args = build_parser().parse_args(["submit", "p.jsonl", *FLAGS])
    body = job_body(PROMPTS, run_args)
    assert body == submit_body(PROMPTS, submit_args) == {
        "prompts": PROMPTS, "model": "tiny", "samples_per_prompt": 4, "epochs": 2, "seed": 7,
        "training": {"pairs": "plain", "algorithm": "ddpo"}, "sampling": {"num_steps": 3}, "train_eval_seeds": 3}
    spec, models = build_spec(PROMPTS, run_args)
    assert spec == JobSpec.model_validate(body) and models == {}


def test_defaults_leave_the_spec_defaults() -> None:
    """Flags left out stay out of the body (epochs too): the model's preset, else the spec's defaults."""
    args = build_parser().parse_args(["submit", "p.jsonl", "--eval-prompt", "a dog", "--eval-seeds", "1"])
    assert submit_body(PROMPTS, args) == {
        "prompts": PROMPTS, "model": "tiny", "seed": 0,
        "eval_prompts": ["a dog"], "eval_seeds": 1}


def test_read_prompts_keeps_the_known_fields(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a cat", "items": ["cat"], "extra": 1}\n\n{"text": "a dog"}\n')
    assert read_prompts(path) == [{"text": "a cat", "items": ["cat"]}, {"text": "a dog"}]
    path.write_text('["a cat"]\n')
    with pytest.raises(ConfigError, match="needs an object with 'text'"):
        read_prompts(path)


def test_run_of_the_toy_model_gets_its_preset() -> None:
    """`dfusion run --model toy` gets the toy preset, as an API job does; a flag given wins."""
    from dfusion_core.config import FusionConfig
    from dfusion_core.toy import world

    prompts = [{"text": "a red striped square above a blue dotted square", "items": ["striped", "dotted"], "mask_thresholds": [0.5, 0.5]}]
    spec, _ = build_spec(prompts, build_parser().parse_args(["run", "p.jsonl", "--model", "toy"]))
    assert spec.preset == "toy" and spec.scorer == "toy" and spec.train_eval_seeds > 0
    assert spec.fusion == FusionConfig(**world.TOY_FUSION)
    assert spec.samples_per_prompt == world.TOY_SAMPLES_PER_PROMPT
    spec, _ = build_spec(prompts, build_parser().parse_args(["run", "p.jsonl", "--model", "toy", "--pairs", "plain",
                                                             "--train-eval-seeds", "0", "--samples-per-prompt", "4"]))
    assert spec.training.pairs == "plain" and spec.train_eval_seeds == 0 and spec.samples_per_prompt == 4
    assert spec.training.learning_rate == world.TOY_TRAINING["learning_rate"]
