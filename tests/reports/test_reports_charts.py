"""The job's charts: Vega-Lite specs with the right series, honest y ranges and the CI band, carried
by report.html with the vendored scripts inline (nothing from a CDN)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from reports import charts
from reports.job import write_report
from services.jobspec import JobSpec

# two epochs of a toy job: a gain of 0.004, then 0.006, with the paired CI of each
METRICS: list[dict[str, Any]] = [
    {"epoch": e, "policy_version": e + 1, "loss": 0.69 - 0.01 * e, "margin": 0.001 * (e + 1),
     "mean_target_gain": gain, "target_win_rate": 0.75, "heldout_score": 0.30 + gain, "heldout_score_base": 0.30,
     "eval_score": 0.30 + gain, "eval_score_base": 0.30, "eval_diff_ci_low": gain - 0.002,
     "eval_diff_ci_high": gain + 0.002}
    for e, gain in enumerate((0.004, 0.006))
]


def _by_id(chart_list: list[charts.Chart]) -> dict[str, charts.Chart]:
    return {c.id: c for c in chart_list}


def _series(spec: dict[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in spec["data"]["values"]:
        out.setdefault(row["series"], []).append(row["score"])
    return out


def test_base_and_trained_share_a_chart_with_the_ci_band() -> None:
    own = _by_id(charts.training_charts(METRICS))["chart-own-prompts"].spec
    assert _series(own) == {charts.UNTRAINED: [0.30, 0.30], charts.TRAINED: [0.304, 0.306]}
    band_layer, line_layer = own["layer"]
    assert band_layer["mark"]["type"] == "area" and line_layer["mark"]["type"] == "line"
    band = band_layer["data"]["values"]
    assert [(round(b["low"], 6), round(b["high"], 6)) for b in band] == [(0.302, 0.306), (0.304, 0.308)]
    for layer in own["layer"]:  # every axis is titled
        assert layer["encoding"]["x"]["title"] and layer["encoding"]["y"]["title"]


def test_y_range_is_not_min_to_max() -> None:
    """A 0.004 change on scores near 0.3 takes a fraction of the height, not all of it."""
    low, high = _by_id(charts.training_charts(METRICS))["chart-heldout"].spec["layer"][0]["encoding"]["y"]["scale"][
        "domain"]
    assert high - low >= charts.MIN_SPAN * 0.306 and low < 0.30 and high > 0.306
    assert (0.306 - 0.30) / (high - low) < 0.3
    assert charts.y_domain([-0.2, 0.5], zero=True)[0] < -0.2 and charts.y_domain([0.1, 0.2], zero=True)[0] <= 0
    assert charts.y_domain([]) == [0.0, 1.0]


def test_fusion_gain_per_epoch_and_training_curves() -> None:
    by_id = _by_id(charts.training_charts(METRICS))
    gain = by_id["chart-fusion-gain"].spec
    assert [(r["epoch"], r["gain"]) for r in gain["data"]["values"]] == [(0, 0.004), (1, 0.006)]
    assert gain["layer"][0]["encoding"]["y"]["scale"]["domain"][0] <= 0  # the bars start at zero
    assert [r["value"] for r in by_id["chart-loss"].spec["data"]["values"]] == pytest.approx([0.69, 0.68])
    assert by_id["chart-margin"].title == "preference margin per policy version"
    # no own-prompts evaluation, no own-prompts chart; the held-out one has no band (no CI measured)
    plain = _by_id(charts.training_charts([{k: v for k, v in m.items() if not k.startswith("eval")} for m in METRICS]))
    assert "chart-own-prompts" not in plain and len(plain["chart-heldout"].spec["layer"]) == 1


def test_no_epoch_no_charts() -> None:
    from reports.job import curves

    assert "data-chart" not in curves([]) and "No epoch has finished yet" in curves([])
    assert curves(METRICS).count("data-chart=") == 5


def test_embed_escapes_the_spec_and_histograms_count_samples() -> None:
    chart = charts.score_histogram(0, [0.1, 0.2, 0.2])
    html = charts.embed(charts.Chart("c", "</script><b>", {"description": "</script>"}))
    assert "</script><b>" not in html and "<\\/script>" in html and "&lt;/script&gt;" in html
    assert chart.spec["encoding"]["y"]["aggregate"] == "count" and len(chart.spec["data"]["values"]) == 3


def test_report_carries_the_specs_and_the_scripts_inline(tmp_path: Path) -> None:
    spec = JobSpec.model_validate({"prompts": [{"text": "a cat", "items": ["cat"], "mask_thresholds": [0.1]}],
                                   "epochs": 2, "samples_per_prompt": 4})
    write_report(tmp_path / "report.html", spec, [], [], METRICS, lambda key: key)
    html = (tmp_path / "report.html").read_text()
    specs = {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r'<script type="application/json" data-chart="([^"]+)">(.*?)</script>', html)}
    assert set(specs) == {"chart-own-prompts", "chart-heldout", "chart-fusion-gain", "chart-loss", "chart-margin"}
    assert _series(specs["chart-own-prompts"]) == {charts.UNTRAINED: [0.30, 0.30], charts.TRAINED: [0.304, 0.306]}
    for name in charts.VENDOR_FILES:  # inline, so report.html works offline and on its own
        assert charts.vendor_script(name)[:200] in html
    assert "<script src=" not in html and "vegaEmbed(" in html
    for vendored in charts.VENDOR_FILES:
        assert (charts.vendor_dir() / vendored).stat().st_size > 10_000
    assert (charts.vendor_dir() / "README.md").read_text().count("BSD-3-Clause") >= 3
