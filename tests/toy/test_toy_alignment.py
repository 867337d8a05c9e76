"""Reduced-size runs of the toy-world benches: bench/fusion_quality.py and bench/alignment.py
produce their summaries, with the exact result lines bench/RESULTS.md quotes."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from tests.toy.scriptload import load_script


def _bench(name: str):
    return load_script(f"bench/{name}.py", f"bench_{name}")


def test_fusion_quality_reduced(tmp_path, capsys):
    torch.set_num_threads(1)
    summary = _bench("fusion_quality").main(["--captions", "2", "--samples", "4", "--steps", "4",
                                             "--threads", "1", "--out", str(tmp_path)])
    assert summary["pairs"] == 4 and summary["captions"] == 2
    assert 0.0 <= summary["p_target_beats_base"] <= 1.0 and math.isfinite(summary["gain"]["mean"])
    assert len(summary["mask_iou_per_step"]) == 4 and all(0 <= x <= 1 for x in summary["mask_iou_per_step"])
    assert summary["dist_reference_base"] > 0 and summary["distance_ratio"] >= 0
    rows = json.loads((tmp_path / "pairs.json").read_text())
    for k, t in enumerate(summary["facts"].values()):  # the transfer table counts the pairs' own facts
        assert t["fixable"] == sum(r["reference_facts"][k] and not r["base_facts"][k] for r in rows)
        assert t["held"] == sum(r["base_facts"][k] for r in rows)
        assert t["fixed"] is None or 0.0 <= t["fixed"] <= 1.0
    patterns = summary["patterns"]  # the per-word counts add up to the two pattern facts' fixable pairs
    assert sum(t["fixable"] for t in patterns.values()) == summary["facts"]["pattern_a"]["fixable"] + \
        summary["facts"]["pattern_b"]["fixable"]
    for pattern, t in patterns.items():  # what the bases and targets drew counts the same pairs
        assert sum(t["bases_drew"].values()) == sum(t["targets_drew"].values()) == t["fixable"]
        assert pattern not in t["bases_drew"]  # a base that drew the pattern asked for had the fact
    split = summary["by_reference"]  # the two groups partition the pairs and recompose the overall P
    assert split["better"]["pairs"] == sum(r["reference_score"] > r["base_score"] for r in rows)
    assert split["better"]["pairs"] + split["tied"]["pairs"] == len(rows)
    wins = sum((g["p_target_beats_base"] or 0.0) * g["pairs"] for g in split.values())
    assert math.isclose(wins, summary["p_target_beats_base"] * len(rows), abs_tol=1e-9)
    for r in rows:  # each image's facts are read from that image: its score is their mean
        for role in ("reference", "base", "target"):
            assert math.isclose(r[f"{role}_score"], sum(r[f"{role}_facts"]) / 5, abs_tol=1e-6), (role, r)
    out = capsys.readouterr().out
    assert re.search(r"^reference outscores its base in \d+ of 4 pairs: P\(target>base\) (-|\d\.\d\d), ",
                     out, re.M), out
    assert re.search(r"^pattern_b: fixed (-|\d\.\d\d) of \d+ ", out, re.M), out
    assert re.search(r"^patterns fixed, by the word asked for: striped (-|\d\.\d\d) of \d+, ", out, re.M), out
    assert re.search(r"^fusion target gain: [+-]\d\.\d\d \(95% CI [+-]\d\.\d\d to [+-]\d\.\d\d\), "
                     r"P\(target>base\) \d\.\d\d$", out, re.M), out
    assert json.loads((tmp_path / "summary.json").read_text())["gate"]["gain_at_least"] == 0.10


def test_alignment_bench_reduced(tmp_path, capsys):
    torch.set_num_threads(1)
    summary = _bench("alignment").main([
        "--seeds", "0", "1", "--prompts", "1", "--val-seeds", "1", "--samples", "4",
        "--epochs", "2", "--steps", "3", "--batch", "4", "--eval-batch", "4", "--batch-pairs", "1",
        "--steps-per-epoch", "3", "--max-passes", "1", "--lrs", "1e-3", "--eval-prompts", "2", "--eval-seeds", "1",
        "--train-eval-seeds", "1", "--threads", "1", "--out", str(tmp_path)])
    for split in ("train_captions", "heldout"):
        assert set(summary[split]["differences"]) == {"plain-none", "fusion-none", "fusion-plain"}
        for ci in summary[split]["differences"].values():
            assert ci["n"] == 2 and ci["lo"] <= ci["mean"] <= ci["hi"]
        assert {arm: len(c) for arm, c in summary[split]["curves"].items()} == {"none": 3, "plain": 3, "fusion": 3}
    for seed in summary["per_seed"]:
        for split in ("train_captions", "heldout"):
            curves = seed["curves"][split]
            # epoch 0 is the untrained model on the same noise for every arm
            assert curves["plain"][0] == curves["fusion"][0] == curves["none"][0]
            assert seed["final"][split] == {arm: c[-1] for arm, c in curves.items()}
        # every arm is scored on the same held-out captions and noise: the untrained model once for all
        assert seed["curves"]["heldout"]["none"] == summary["per_seed"][0]["curves"]["heldout"]["none"]
        # the fusion arm's budget: 3 steps of 1 pair, but at most one pass over the pairs it kept (2 or fewer of 2);
        # the plain arm takes as many steps (their mean over the epochs), not its own pass count
        fusion, plain = seed["jobs"]["fusion"]["epochs"], seed["jobs"]["plain"]["epochs"]
        assert [e["optimizer_steps"] for e in fusion] == [e["pairs_trained"] for e in fusion]
        mean_steps = max(1, round(sum(e["optimizer_steps"] for e in fusion) / len(fusion)))
        assert [e["optimizer_steps"] for e in plain] == [mean_steps if e["pairs_trained"] else 0 for e in plain]
        assert all(e["pair_passes"] == (e["optimizer_steps"] / e["pairs_trained"] if e["pairs_trained"] else None)
                   for e in fusion + plain)
    lines = capsys.readouterr().out
    number = r"[+-]\d\.\d{3}"
    for name in summary["train_captions"]["differences"]:
        for prefix in ("", "held-out "):
            assert re.search(rf"^{prefix}paired difference {name}: {number} \(95% CI {number} to {number}\)$",
                             lines, re.M), lines
    svg = (tmp_path / "alignment.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 6 and svg.count("<polygon") == 6


def test_alignment_probe_reduced(tmp_path, capsys):
    torch.set_num_threads(1)
    bench = _bench("alignment")
    args = ["--probe", "--seeds", "100", "--prompts", "1", "--val-seeds", "2", "--samples", "4", "--epochs", "1",
            "--steps", "3", "--batch", "4", "--eval-batch", "4", "--batch-pairs", "1", "--steps-per-epoch", "1",
            "--lrs", "1e-3", "--threads", "1", "--out", str(tmp_path)]
    result = bench.main(args)
    row = result["per_seed"][0]
    # one checkpoint per epoch per arm, each read fact by fact; the mean score is the facts' mean
    assert {arm: len(row[arm]) for arm in ("plain", "fusion")} == {"plain": 1, "fusion": 1}
    for arm in ("plain", "fusion"):
        assert [f["mean"] for f in row["facts"][arm]] == row[arm]
    # the probe's reading of the untrained model is the bench's own score of the same validation samples
    evaluator = bench.Evaluator(bench.parse_args(args))
    captions = bench.training_captions(bench.splits(bench.parse_args(args))[0], 100, 1)
    seeds = [bench.VAL_SEED_BASE + k for k in range(2)]
    assert math.isclose(row["untrained"], sum(evaluator.scores(captions, seeds, None)) / len(captions), abs_tol=1e-6)
    # the first epoch's fusion job: 4 samples and 2 fused targets of the one caption
    assert row["first_epoch_images"] == {"samples": 4, "targets": 2}
    assert set(result["first_epoch_image_facts"]["targets"]) == {"colour_a", "pattern_a", "colour_b", "pattern_b", "relation"}
    assert result["validation_differences"]["fusion"]["n"] == 1
    assert re.search(r"^validation fusion-none: [+-]\d\.\d{3} \(95% CI", capsys.readouterr().out, re.M)
    assert json.loads((tmp_path / "probe.json").read_text())["config"]["probe"] is True


def test_alignment_settings_reach_both_arms():
    bench = _bench("alignment")
    args = bench.parse_args(["--training", '{"beta": 1000}', "--fusion", '{"mask_level": 0.75}'])
    spec = bench.job_spec(["a red striped square above a blue dotted square"], 0, "fusion", 3e-3, args)
    assert spec.training.beta == 1000 and spec.training.learning_rate == 3e-3
    # the fusion setting is laid over the toy preset, whose other values stay
    assert spec.fusion.mask_level == 0.75 and spec.fusion.blocks == (4, 7) and spec.fusion.mask_mode == "quantile"


def test_alignment_settings_must_be_json_objects(capsys):
    bench = _bench("alignment")
    for bad in ("[1]", "{beta: 1}"):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(["--training", bad])
        assert exit_info.value.code == 2 and "--training" in capsys.readouterr().err
