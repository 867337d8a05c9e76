"""`dfusion run` (embedded): the run folder a user gets, with trained LoRA checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def _run_tiny(out: Path, *flags: str, timeout: int) -> subprocess.CompletedProcess:
    """`dfusion run` of the tiny model on one prompt (4 samples, 4 DDIM steps) into `out`."""
    prompts = out.parent / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a red and woolen dog", "items": ["woolen", "dog"],
                                   "mask_thresholds": [0.02, 0.03]}) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(prompts), "--model", "tiny", "--samples-per-prompt", "4",
         "--steps", "4", "--out", str(out), "--no-progress", *flags],
        capture_output=True, text=True, timeout=timeout,
        # one torch thread, as the suite's other embedded runs: ~25 s of CPU; two threads on a loaded
        # 2-core machine spin-wait on each other (63-165 s measured beside a running benchmark)
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch tiny run with the train-caption evaluation (3 seeds) and `--report-to tensorboard`
    (when the tracking extra is installed), read by the tests below: one run instead of three."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    tracking = ["--report-to", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    proc = _run_tiny(out, "--epochs", "2", "--train-eval-seeds", "3", *tracking, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (out / "stdout.txt").write_text(proc.stdout)
    (out / "stderr.txt").write_text(proc.stderr)
    return out


def test_run_leaves_trained_checkpoints_and_metrics(tiny_run: Path) -> None:
    out = tiny_run
    summary = json.loads((out / "stdout.txt").read_text().strip().splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["counts"]["pairs"] == 4
    for version in (1, 2):
        weights = load_file(str(out / "checkpoints" / str(version) / "pytorch_lora_weights.safetensors"))
        lora_b = [t for k, t in weights.items() if "lora_B" in k or "lora.up" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "LoRA B is still zero: nothing trained"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["policy_version"] for m in metrics["epochs"]] == [1, 2]
    for m in metrics["epochs"]:
        assert m["loss"] is not None and m["margin"] is not None and m["heldout_score"] is not None
        # one train unit per epoch over both pairs; the filter keeps the targets that beat their base
        assert m["pairs_total"] == 2 and m["target_win_rate"] == m["pairs_trained"] / 2
        assert m["optimizer_steps"] == (1 if m["pairs_trained"] else 0) and "mean_target_gain" in m
    assert metrics["epochs"][0]["pairs_trained"] >= 1  # version 1 is trained, as checked above
    assert (out / "report.html").read_text().count('class="pair"') == 4


def test_run_evaluates_on_its_own_prompts_with_fresh_noise(tiny_run: Path) -> None:
    """`--train-eval-seeds 3`: every epoch scores the job's prompt with 3 fresh seeds, trained against
    the untrained model (measured once) on the same noise, with a paired 95 % CI; the summary line
    carries the last epoch's, the last stderr line says it in words."""
    epochs = json.loads((tiny_run / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 2 and epochs[0]["eval_score_base"] == epochs[1]["eval_score_base"]
    base = json.loads((tiny_run / "eval" / "train_captions_base.json").read_text())
    assert len(base) == 3 and epochs[0]["eval_score_base"] == pytest.approx(sum(base) / 3)
    for m in epochs:
        diff = m["eval_score"] - m["eval_score_base"]
        assert m["eval_samples"] == 3 and m["eval_diff_ci_low"] <= diff <= m["eval_diff_ci_high"]
        assert m["eval_diff_ci_low"] < m["eval_diff_ci_high"]  # trained weights: the three differences differ
    summary = json.loads((tiny_run / "stdout.txt").read_text().strip().splitlines()[-1])
    for name in ("eval_score_base", "eval_score", "eval_diff_ci_low", "eval_diff_ci_high", "eval_samples"):
        assert summary[name] == epochs[-1][name]
    last = (tiny_run / "stderr.txt").read_text().strip().splitlines()[-1]
    assert last.startswith(f"training prompts, fresh noise: {epochs[-1]['eval_score_base']:.4f} untrained -> "
                           f"{epochs[-1]['eval_score']:.4f} after 2 epoch(s)")
    assert f"95% CI {epochs[-1]['eval_diff_ci_low']:+.4f} to {epochs[-1]['eval_diff_ci_high']:+.4f}" in last


def test_run_names_the_bad_field(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a cat", "items": ["dog"], "mask_thresholds": [0.1]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "run", str(prompts), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "prompts.0" in proc.stderr and "'dog' is not a word" in proc.stderr


def test_run_reports_to_tensorboard(tiny_run: Path) -> None:
    """`--report-to tensorboard` leaves event files with the step and epoch curves and pair images."""
    pytest.importorskip("tensorboard", reason="report_to='tensorboard' needs the tracking extra: "
                                              "pip install -e '.[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tiny_run
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    metrics = json.loads((out / "metrics.json").read_text())["epochs"]
    for name in ("heldout_score", "heldout_score_base", "mean_sample_score", "target_win_rate"):
        assert [(p.step, p.value) for p in events.Scalars(f"epoch/{name}")] == \
            [(epoch, pytest.approx(m[name], rel=1e-5)) for epoch, m in enumerate(metrics)]
    assert metrics[0]["optimizer_steps"] == 1  # this prompt and seed train at 4 steps (checked above too)
    assert {"train/loss", "train/margin", "train/grad_norm", "train/reward_accuracy"} <= set(tags["scalars"])
    trained = [m for m in metrics if m["optimizer_steps"]]  # one step per trained epoch, numbered across the job
    assert [(p.step, p.value) for p in events.Scalars("train/loss")] == \
        [(i + 1, pytest.approx(m["loss"], rel=1e-5)) for i, m in enumerate(trained)]
    assert sorted(tags["images"]) == ["pairs/0_0", "pairs/0_1"]  # both pairs of the prompt: reference | base | target
    assert [i.step for i in events.Images("pairs/0_0")] == [0, 1]  # once per epoch


def test_run_refuses_unknown_trackers(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a dog", "items": ["dog"], "mask_thresholds": [0.1]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "run", str(prompts), "--report-to", "comet",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "report_to" in proc.stderr and "must be one of 'none', 'tensorboard', 'wandb', 'mlflow'" in proc.stderr
