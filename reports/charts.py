"""A job's charts as Vega-Lite specs: what was trained, base against trained, and what fusion gained.

The specs are plain dicts (torch-free); `embed` writes one into a page as JSON beside a figure,
and the vendored Vega scripts (`reports/static/vendor/`, served by the API under
`/static/vendor/`, inlined into report.html) draw it in the browser. Nothing is fetched from
the network.

Y ranges: a score that moves by 0.004 must not fill the chart's height, so a domain spans at
least `MIN_SPAN` of its values' magnitude (`y_domain`); a gain or a margin's domain includes 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reports.html import escape

#: The scripts that draw the charts, in load order (reports/static/vendor/README.md: versions, licenses).
VENDOR_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
#: Where the API serves them (api/web.py).
VENDOR_URL = "/static/vendor"
#: A y domain spans at least this share of the largest |value| it shows.
MIN_SPAN = 0.1
WIDTH, HEIGHT = 300, 170
UNTRAINED, TRAINED, CI_BAND = "untrained (adapters off)", "trained", "trained: 95 % CI of the paired gain"

# Draws every chart spec on the page into its figure (the page loads the vendored scripts first).
RENDER_SCRIPT = """document.addEventListener('DOMContentLoaded',function(){
for(const s of document.querySelectorAll('script[data-chart]')){const el=document.getElementById(s.dataset.chart);
vegaEmbed(el,JSON.parse(s.textContent),{actions:false,renderer:'svg'}).then(r=>{
const svg=el.querySelector('svg');if(svg){svg.setAttribute('role','img');svg.setAttribute('aria-label',el.dataset.title);}
}).catch(e=>{el.textContent=String(e);});}});"""


@dataclass(frozen=True)
class Chart:
    """One chart: `id` names its element on the page, `title` is its caption, `spec` its Vega-Lite."""

    id: str
    title: str
    spec: dict[str, Any]


def y_domain(values: list[float], *, zero: bool = False) -> list[float]:
    """[low, high] around the values, at least MIN_SPAN of their magnitude wide, padded by 10 %;
    with `zero`, 0 is inside."""
    vals = [v for v in values if v is not None and math.isfinite(v)] + ([0.0] if zero else [])
    if not vals:
        return [0.0, 1.0]
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, MIN_SPAN * max(abs(lo), abs(hi)), 1e-6)
    mid, pad = (lo + hi) / 2, 0.1 * span
    low, high = mid - span / 2 - pad, mid + span / 2 + pad
    if zero:
        low, high = min(low, 0.0), max(high, 0.0)
    return [_round(low), _round(high)]


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _base(title: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"description": title, "width": WIDTH, "height": HEIGHT, "data": {"values": rows},
            "config": {"legend": {"orient": "bottom", "labelLimit": 260}}}


def _x_version() -> dict[str, Any]:
    return {"field": "policy_version", "type": "quantitative", "title": "policy version (LoRA after epoch e is e + 1)",
            "axis": {"tickMinStep": 1, "format": "d"}}


def line_chart(id_: str, title: str, metrics: list[dict[str, Any]], key: str, y_title: str,
               zero: bool = False) -> Chart:
    """One metric per policy version; with `zero` its y range includes 0."""
    rows = [{"policy_version": m["policy_version"], "value": m.get(key)} for m in metrics if m.get(key) is not None]
    spec = _base(title, rows) | {
        "mark": {"type": "line", "point": True},
        "encoding": {"x": _x_version(), "y": {"field": "value", "type": "quantitative", "title": y_title,
                                              "scale": {"domain": y_domain([r["value"] for r in rows], zero=zero)}},
                     "tooltip": [{"field": "policy_version"}, {"field": "value", "format": ".4f"}]}}
    return Chart(id_, title, spec)


def base_vs_trained(id_: str, title: str, metrics: list[dict[str, Any]], prefix: str, y_title: str) -> Chart:
    """`{prefix}_score_base` (untrained, same noise) and `{prefix}_score` (trained) per policy version
    on one chart; where the epoch has `{prefix}_diff_ci_low/high`, the trained line carries the
    paired 95 % CI of the gain as a band (base + CI)."""
    lines: list[dict[str, Any]] = []
    band: list[dict[str, Any]] = []
    for m in metrics:
        v, base, trained = m["policy_version"], m.get(f"{prefix}_score_base"), m.get(f"{prefix}_score")
        if base is not None:
            lines.append({"policy_version": v, "series": UNTRAINED, "score": base})
        if trained is not None:
            lines.append({"policy_version": v, "series": TRAINED, "score": trained})
        lo, hi = m.get(f"{prefix}_diff_ci_low"), m.get(f"{prefix}_diff_ci_high")
        if base is not None and lo is not None and hi is not None:
            band.append({"policy_version": v, "series": CI_BAND, "low": base + lo, "high": base + hi})
    domain = y_domain([r["score"] for r in lines] + [r[k] for r in band for k in ("low", "high")])
    y = {"type": "quantitative", "title": y_title, "scale": {"domain": domain}}
    named = [UNTRAINED, TRAINED, CI_BAND][: 3 if band else 2]
    color = {"field": "series", "type": "nominal", "title": None,
             "scale": {"domain": named, "range": ["#888888", "#c33333", "#f2c6c6"][: len(named)]}}
    layers: list[dict[str, Any]] = []
    if band:
        layers.append({"data": {"values": band}, "mark": {"type": "area", "opacity": 1},
                       "encoding": {"x": _x_version(), "y": {**y, "field": "low"}, "y2": {"field": "high"},
                                    "color": color}})
    layers.append({"mark": {"type": "line", "point": True},
                   "encoding": {"x": _x_version(), "y": {**y, "field": "score"}, "color": color,
                                "tooltip": [{"field": "series"}, {"field": "policy_version"},
                                            {"field": "score", "format": ".4f"}]}})
    return Chart(id_, title, _base(title, lines) | {"layer": layers})


def fusion_gain(metrics: list[dict[str, Any]]) -> Chart:
    """Per epoch, how far the fused targets scored above their bases (`mean_target_gain`), with the
    share that beat their base (`target_win_rate`) in the tooltip."""
    title = "fusion gain per epoch"
    rows = [{"epoch": m["epoch"], "gain": m["mean_target_gain"], "win_rate": m.get("target_win_rate")}
            for m in metrics if m.get("mean_target_gain") is not None]
    y = {"field": "gain", "type": "quantitative", "title": "mean score gain, fused target − base",
         "scale": {"domain": y_domain([r["gain"] for r in rows], zero=True)}}
    spec = _base(title, rows) | {"layer": [
        {"mark": {"type": "bar", "color": "#4a86c5"},
         "encoding": {"x": {"field": "epoch", "type": "ordinal", "title": "epoch", "axis": {"labelAngle": 0}}, "y": y,
                      "tooltip": [{"field": "epoch"}, {"field": "gain", "format": "+.4f"},
                                  {"field": "win_rate", "title": "targets above base", "format": ".0%"}]}},
        {"mark": {"type": "rule", "color": "#444"}, "encoding": {"y": {"datum": 0}}}]}
    return Chart("chart-fusion-gain", title, spec)


def score_histogram(epoch: int, scores: list[float]) -> Chart:
    title = f"sample scores, epoch {epoch}"
    spec = _base(title, [{"score": s} for s in scores]) | {
        "mark": {"type": "bar", "color": "#4a86c5"},
        "encoding": {"x": {"field": "score", "type": "quantitative", "bin": {"maxbins": 12}, "title": "scorer's score"},
                     "y": {"aggregate": "count", "type": "quantitative", "title": "samples"}}}
    return Chart(f"chart-scores-{epoch}", title, spec)


def training_charts(metrics: list[dict[str, Any]]) -> list[Chart]:
    """The job's curves: base vs trained on its own prompts (with the CI) and on held-out prompts,
    the fusion gain, the loss and the preference margin."""
    charts = []
    if any(m.get("eval_score") is not None for m in metrics):
        charts.append(base_vs_trained("chart-own-prompts", "own prompts, fresh noise: untrained vs trained",
                                      metrics, "eval", "mean score, same noise"))
    charts.append(base_vs_trained("chart-heldout", "held-out alignment per policy version", metrics, "heldout",
                                  "held-out mean score"))
    charts += [fusion_gain(metrics),
               line_chart("chart-loss", "DPO loss per policy version", metrics, "loss", "training loss (mean of steps)"),
               line_chart("chart-margin", "preference margin per policy version", metrics, "margin",
                          "margin (mean of steps)", zero=True)]
    return charts


def embed(chart: Chart) -> str:
    """The chart's figure, its caption and its spec as JSON (drawn by RENDER_SCRIPT)."""
    data = json.dumps(chart.spec, separators=(",", ":")).replace("</", "<\\/")
    return (f'<figure class="chart"><figcaption>{escape(chart.title)}</figcaption>'
            f'<div id="{escape(chart.id)}" class="vega" data-title="{escape(chart.title)}"></div>'
            f'<script type="application/json" data-chart="{escape(chart.id)}">{data}</script></figure>')


def embed_all(charts: list[Chart]) -> str:
    return '<div class="charts">' + "".join(embed(c) for c in charts) + "</div>"


def vendor_dir() -> Path:
    return Path(str(resources.files("reports") / "static" / "vendor"))


def vendor_script(name: str) -> str:
    """A vendored script's text (report.html inlines them: the file works offline, on its own)."""
    return (vendor_dir() / name).read_text(encoding="utf-8")


def inline_scripts() -> str:
    """Every vendored script and the render script, inline, for a self-contained page."""
    return "".join(f"<script>{vendor_script(n)}</script>" for n in VENDOR_FILES) + f"<script>{RENDER_SCRIPT}</script>"


def linked_scripts() -> str:
    """The vendored scripts by URL (the API serves them at VENDOR_URL) and the render script, inline."""
    return "".join(f'<script src="{VENDOR_URL}/{n}"></script>' for n in VENDOR_FILES) + f"<script>{RENDER_SCRIPT}</script>"
