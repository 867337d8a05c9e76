"""`dfusion run --model tiny-sdxl`: a 2-epoch job whose LoRA stock `StableDiffusionXLPipeline` loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def test_tiny_sdxl_run_leaves_a_lora_the_sdxl_pipeline_loads(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a red and woolen dog", "items": ["woolen", "dog"],
                                   "mask_thresholds": [0.02, 0.03]}) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(prompts), "--model", "tiny-sdxl", "--samples-per-prompt", "4",
         "--steps", "3", "--epochs", "2", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as the other embedded runs (tests/cli/test_cli_run.py): ~20 s
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["counts"]["pairs"] == 4
    assert [m["policy_version"] for m in summary["metrics"]] == [1, 2]
    assert json.loads((out / "spec.json").read_text())["model"] == "tiny-sdxl"
    trained = [v for v in (1, 2) if summary["metrics"][v - 1]["optimizer_steps"]]
    assert trained, "no epoch trained: no checkpoint to load"

    from dfusion_core.sdxl import build_tiny_sdxl, to_sdxl_pipeline

    pipe = to_sdxl_pipeline(build_tiny_sdxl())
    pipe.set_progress_bar_config(disable=True)

    def image() -> torch.Tensor:
        return pipe("a red and woolen dog", num_inference_steps=4, guidance_scale=5.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    before = image()
    assert torch.equal(before, image())  # deterministic: any difference below is the adapter's
    pipe.load_lora_weights(str(out / "checkpoints" / str(trained[-1])))
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}
    after = image()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
