"""report.html of a run: pairs as base | reference (mask overlaid) | target, scores, curves.

Plain HTML with inline SVG; images are referenced by relative path, nothing is fetched from
the network. Torch-free (records in, text out), so the API's pages can reuse the pieces.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.jobspec import JobSpec
from services.records import PairRecord, SampleRecord

CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:4px 8px;text-align:center;vertical-align:top}
.pair img,.gallery img{width:128px;height:128px;image-rendering:pixelated;display:block}
.stack{position:relative;width:128px;height:128px}
.stack .tint{position:absolute;left:0;top:0;width:128px;height:128px;background:rgba(255,30,30,.5);mask-mode:luminance;mask-size:100% 100%;-webkit-mask-size:100% 100%}
.pair img.mask{width:64px;height:64px;border:1px solid #ccc}
.gallery{display:flex;flex-wrap:wrap;gap:6px}.gallery figure{margin:0;font-size:11px}
.muted{color:#777}.charts{display:flex;gap:24px;flex-wrap:wrap}
.progress td{text-align:left}.progress progress{width:320px;height:14px}
.status{font-weight:600;padding:1px 8px;border-radius:8px;background:#eee}
.status.succeeded{background:#cfc}.status.failed,.status.cancelled{background:#fcc}.status.running{background:#cdf}
a{color:#245}nav{margin-bottom:12px}
"""

#: Stages shown as progress bars, in pipeline order (the names of the JobStore's counters).
STAGES = ("samples", "scored", "pairs", "trained_steps")


def _e(x: object) -> str:
    return html.escape(str(x))


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else _e(x)


def line_chart(title: str, xs: list[float], ys: list[float | None], w: int = 320, h: int = 160) -> str:
    """A small SVG line chart; points with no value are left out."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    head = f'<figure><figcaption>{_e(title)}</figcaption><svg width="{w}" height="{h}" role="img" aria-label="{_e(title)}">'
    if not pts:
        return head + f'<text x="10" y="{h // 2}" class="muted">no data</text></svg></figure>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    sx = (w - 60) / ((x1 - x0) or 1)
    sy = (h - 40) / ((y1 - y0) or 1)
    coords = [(40 + (x - x0) * sx, h - 20 - (y - y0) * sy) for x, y in pts]
    poly = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#c33"/>' for cx, cy in coords)
    labels = (f'<text x="2" y="14" font-size="10">{y1:.4g}</text><text x="2" y="{h - 22}" font-size="10">{y0:.4g}</text>'
              f'<text x="40" y="{h - 4}" font-size="10">{x0:g}</text><text x="{w - 30}" y="{h - 4}" font-size="10">{x1:g}</text>')
    return (head + f'<rect x="38" y="8" width="{w - 50}" height="{h - 28}" fill="none" stroke="#ccc"/>'
            f'<polyline points="{poly}" fill="none" stroke="#c33" stroke-width="2"/>{dots}{labels}</svg></figure>')


def histogram(title: str, values: list[float], bins: int = 10, w: int = 320, h: int = 140) -> str:
    head = f'<figure><figcaption>{_e(title)}</figcaption><svg width="{w}" height="{h}" role="img" aria-label="{_e(title)}">'
    if not values:
        return head + "</svg></figure>"
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top = max(counts)
    bar_w = (w - 20) / bins
    bars = "".join(
        f'<rect x="{10 + i * bar_w:.1f}" y="{h - 20 - c / top * (h - 30):.1f}" width="{bar_w - 2:.1f}" '
        f'height="{c / top * (h - 30):.1f}" fill="#48c"><title>{c}</title></rect>' for i, c in enumerate(counts))
    labels = f'<text x="10" y="{h - 4}" font-size="10">{lo:.3g}</text><text x="{w - 40}" y="{h - 4}" font-size="10">{hi:.3g}</text>'
    return head + bars + labels + "</svg></figure>"


def curves(metrics: list[dict[str, Any]]) -> str:
    versions = [float(m["policy_version"]) for m in metrics]
    held = [m.get("heldout_score") for m in metrics]
    base = metrics[0].get("heldout_score_base") if metrics else None
    held_x = ([0.0] if base is not None else []) + versions
    held_y = ([base] if base is not None else []) + held
    return ('<div class="charts">'
            + line_chart("DPO loss per policy version", versions, [m.get("loss") for m in metrics])
            + line_chart("preference margin per policy version", versions, [m.get("margin") for m in metrics])
            + line_chart("held-out alignment per policy version", held_x, held_y)
            + "</div>")


def _trained(p: PairRecord) -> str:
    return {None: "", True: "<br>trained", False: '<br><span class="muted">filtered out</span>'}[p.trained]


def pair_rows(pairs: Sequence[PairRecord], url: Callable[[str], str]) -> str:
    """Each pair as base | reference with the item mask overlaid (red where the mask is white) | target,
    and the mask itself, each with its own score; plain pairs (no mask) show none."""
    rows = []
    for p in pairs:
        tint = mask = '<span class="muted">–</span>'
        if p.mask_key:
            m = _e(url(p.mask_key))
            tint = (f'<div class="tint" role="img" aria-label="item mask overlay" '
                    f'style="mask-image:url(&quot;{m}&quot;);-webkit-mask-image:url(&quot;{m}&quot;)"></div>')
            mask = f'<img class="mask" src="{m}" alt="item mask">'
        rows.append(
            f'<tr class="pair"><td class="muted">{_e(p.id)}<br>{_e(p.prompt)}</td>'
            f'<td><img src="{_e(url(p.base_image_key))}" alt="base"><br>base {_fmt(p.base_score)}</td>'
            f'<td><div class="stack"><img src="{_e(url(p.reference_image_key))}" alt="reference">'
            f'{tint if p.mask_key else ""}</div>reference {_fmt(p.reference_score)}</td>'
            f'<td><img src="{_e(url(p.target_image_key))}" alt="target"><br>'
            f'target <span class="target-score">{_fmt(p.target_score)}</span>{_trained(p)}</td>'
            f"<td>{mask}</td></tr>")
    return ("<table><tr><th>pair</th><th>base (loser)</th><th>reference + item mask</th><th>target (winner)</th>"
            "<th>mask</th></tr>" + "".join(rows) + "</table>")


def gallery(samples: Sequence[SampleRecord], url: Callable[[str], str]) -> str:
    figs = [f'<figure><img src="{_e(url(s.image_key))}" alt="{_e(s.id)}" loading="lazy">'
            f'{_e(s.id)} · v{_e(s.policy_version)} · {_fmt(s.score)}</figure>' for s in samples]
    return '<div class="gallery">' + "".join(figs) + "</div>"


def score_histograms(samples: Sequence[SampleRecord]) -> str:
    epochs = sorted({s.epoch for s in samples})
    return '<div class="charts">' + "".join(
        histogram(f"sample scores, epoch {e}", [s.score for s in samples if s.epoch == e and s.score is not None])
        for e in epochs) + "</div>"


def stage_totals(expected: dict[str, int]) -> dict[str, int | None]:
    """Expected final count per stage (`JobSpec.expected_counts().total`); optimizer steps are not
    known in advance (the pair filter decides how many pairs train)."""
    return {**{name: expected.get(name) for name in STAGES}, "trained_steps": None}


def progress_bars(counts: dict[str, int], totals: dict[str, int | None]) -> str:
    """One <progress> per stage; ids `progress-<stage>` / `count-<stage>` let a page script update them."""
    rows = []
    for name in STAGES:
        done, total = counts.get(name, 0), totals.get(name)
        bar = (f'<progress id="progress-{name}" value="{done}" max="{total}"></progress>' if total
               else f'<progress id="progress-{name}"></progress>')
        rows.append(f'<tr><th>{_e(name.replace("_", " "))}</th><td>{bar}</td>'
                    f'<td id="count-{name}">{done}{f" / {total}" if total else ""}</td></tr>')
    return '<table class="progress">' + "".join(rows) + "</table>"


def metrics_table(metrics: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{m['epoch']}</td><td>{m['policy_version']}</td><td>{_fmt(m.get('loss'))}</td>"
        f"<td>{_fmt(m.get('margin'))}</td><td>{_fmt(m.get('mean_sample_score'))}</td>"
        f"<td>{_fmt(m.get('pairs_trained'))} / {_fmt(m.get('pairs_total'))}</td>"
        f"<td>{_fmt(m.get('target_win_rate'))}</td><td>{_fmt(m.get('mean_target_gain'))}</td>"
        f"<td>{_fmt(m.get('heldout_score'))}</td></tr>" for m in metrics)
    return ("<table><tr><th>epoch</th><th>version</th><th>loss</th><th>margin</th>"
            "<th>mean sample score</th><th>pairs trained</th><th>target win rate</th><th>mean target gain</th>"
            f"<th>held-out score</th></tr>{rows}</table>")


def page(title: str, body: str, head: str = "") -> str:
    """A whole HTML document with the shared style; `head` adds elements to <head>."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style>{head}</head><body>{body}</body></html>")


def write_report(path: Path, spec: JobSpec, samples: Sequence[SampleRecord], pairs: Sequence[PairRecord],
                 metrics: list[dict[str, Any]], url: Callable[[str], str]) -> None:
    body = (
        f"<h1>dfusion run</h1><p>model <b>{_e(spec.model)}</b> · {len(spec.prompts)} prompts × "
        f"{spec.samples_per_prompt} samples × {spec.epochs} epochs · pairs: {_e(spec.training.pairs)} · "
        f"loss: {_e(spec.training.algorithm)}</p>"
        f"<h2>Training</h2>{metrics_table(metrics)}{curves(metrics)}"
        f"<h2>Pairs</h2>{pair_rows(pairs, url)}<h2>Scores</h2>{score_histograms(samples)}"
        f"<h2>Samples</h2>{gallery(samples, url)}")
    path.write_text(page("dfusion run", body))
