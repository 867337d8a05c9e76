"""A reduced-size run of bench/alignment.py: three arms, finite mean and std on held-out captions."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_alignment_bench_reduced(tmp_path):
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_alignment", ROOT / "bench" / "alignment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--seeds", "0", "1", "--prompts", "1", "--samples", "4", "--epochs", "1", "--steps", "4",
                          "--eval-prompts", "2", "--eval-seeds", "1", "--batch", "4", "--out", str(tmp_path)])
    assert set(summary["arms"]) == {"none", "plain", "fusion"}
    for arm in summary["arms"].values():
        assert len(arm["per_seed"]) == 2
        assert math.isfinite(arm["mean"]) and math.isfinite(arm["std"]) and 0.0 <= arm["mean"] <= 1.0
    assert all(r["optimizer_steps"] == 1 for r in summary["runs"])
    assert json.loads((tmp_path / "summary.json").read_text())["arms"].keys() == summary["arms"].keys()
    assert (tmp_path / "alignment.svg").read_text().startswith("<svg")
