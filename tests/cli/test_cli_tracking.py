"""`dfusion run --report-to wandb|mlflow`: a run folder with the tracker's files (W&B offline, read
back with its own `wandb leet inspect`), and a missing library refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROMPT = {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]}
#: blocks one import as if its package were not installed, then runs the CLI
BLOCKED = "import sys; sys.modules[sys.argv.pop(1)] = None; from cli.main import main; sys.exit(main(sys.argv[1:]))"


def _run(out: Path, *flags: str, env: dict[str, str | None], block: str | None = None) -> subprocess.CompletedProcess:
    """`dfusion run` of the tiny model on one prompt (4 samples, 4 DDIM steps, 1 epoch) into `out`;
    `env` adds to this process's environment (None: unset), `block` an import to make fail."""
    prompts = out.parent / "prompts.jsonl"
    prompts.write_text(json.dumps(PROMPT) + "\n")
    head = [sys.executable, "-c", BLOCKED, block] if block else [sys.executable, "-m", "cli.main"]
    return subprocess.run(
        [*head, "run", str(prompts), "--model", "tiny", "--samples-per-prompt", "4", "--steps", "4",
         "--out", str(out), "--no-progress", *flags],
        capture_output=True, text=True, timeout=300,
        # one torch thread: the machine is shared
        env={k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1", **env}.items() if v is not None},
    )


def test_run_without_the_library_names_report_to_and_the_extra(tmp_path: Path) -> None:
    """(Each backend's message: tests/workers/test_wrk_tracking.py.)"""
    proc = _run(tmp_path / "run", "--report-to", "wandb", env={}, block="wandb")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dfusion run: error: report_to: 'wandb' needs the wandb package: pip install 'dfusion[wandb]'" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "images").exists()


def test_run_reports_to_wandb_offline_in_the_run_folder(tmp_path: Path) -> None:
    """WANDB_MODE=offline and no WANDB_DIR: the offline run lands in <out>/wandb/, named after the folder."""
    pytest.importorskip("wandb", reason="report_to='wandb' needs the wandb extra: pip install -e '.[wandb]'")
    out = tmp_path / "run"
    proc = _run(out, "--report-to", "wandb", env={"WANDB_MODE": "offline", "WANDB_DIR": None,
                                                  "WANDB_PROJECT": "dfusion-test", "WANDB_RUN_ID": None})
    assert proc.returncode == 0, proc.stderr[-2000:]
    [log] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    read = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    records = [json.loads(line) for line in read.stdout.splitlines() if line.startswith("{")]
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert run["display_name"] == "run" and run["project"] == "dfusion-test"
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    [metrics] = json.loads((out / "metrics.json").read_text())["epochs"]
    assert metrics["optimizer_steps"] == 1  # this prompt and seed train one step at 4 DDIM steps
    assert [(r["train/step"], r["train/loss"]) for r in rows if "train/step" in r] == \
        [(1, pytest.approx(metrics["loss"], rel=1e-5))]
    [epoch] = [r for r in rows if "epoch" in r]
    for name in ("heldout_score", "heldout_score_base", "mean_sample_score", "target_win_rate"):
        assert epoch[f"epoch/{name}"] == pytest.approx(metrics[name], rel=1e-5)
    images = sorted(k.removesuffix(".path") for k in epoch if k.startswith("pairs/") and k.endswith(".path"))
    assert images == ["pairs/0_0", "pairs/0_1"]  # both pairs of the prompt, reference | base | target
    assert all((log.parent / "files" / epoch[f"{k}.path"]).is_file() for k in images)
