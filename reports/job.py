"""A job's report pieces: pairs as base | reference (mask overlaid) | target, scores, curves
(Vega-Lite charts, `reports.charts`), progress, and `write_report` for report.html of a run.

Images are referenced by URL or relative path; torch-free (records in, text out), so the run's
report.html (workers) and the API's pages (api/web.py) share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reports import charts
from reports.html import escape, fmt, page
from services.jobspec import JobSpec
from services.records import PairRecord, SampleRecord

#: Stages shown as progress bars, in pipeline order (the names of the JobStore's counters).
STAGES = ("samples", "scored", "pairs", "trained_steps")


def curves(metrics: list[dict[str, Any]]) -> str:
    """Base vs trained (with the CI where measured), the fusion gain, the loss and the margin."""
    if not metrics:
        return '<p class="muted">No epoch has finished yet: its curves appear here when one has.</p>'
    return charts.embed_all(charts.training_charts(metrics))


def _trained(p: PairRecord) -> str:
    return {None: "", True: "<br>trained", False: '<br><span class="muted">filtered out</span>'}[p.trained]


def pair_rows(pairs: Sequence[PairRecord], url: Callable[[str], str]) -> str:
    """Each pair as base | reference with the item mask overlaid (red where the mask is white) | target,
    and the mask itself, each with its own score; plain pairs (no mask) show none."""
    rows = []
    for p in pairs:
        tint = mask = '<span class="muted">–</span>'
        if p.mask_key:
            m = escape(url(p.mask_key))
            tint = (f'<div class="tint" role="img" aria-label="item mask overlay" '
                    f'style="mask-image:url(&quot;{m}&quot;);-webkit-mask-image:url(&quot;{m}&quot;)"></div>')
            mask = f'<img class="mask" src="{m}" alt="item mask">'
        rows.append(
            f'<tr class="pair"><td class="muted">{escape(p.id)}<br>{escape(p.prompt)}</td>'
            f'<td><img src="{escape(url(p.base_image_key))}" alt="base"><br>base {fmt(p.base_score)}</td>'
            f'<td><div class="stack"><img src="{escape(url(p.reference_image_key))}" alt="reference">'
            f'{tint if p.mask_key else ""}</div>reference {fmt(p.reference_score)}</td>'
            f'<td><img src="{escape(url(p.target_image_key))}" alt="target"><br>'
            f'target <span class="target-score">{fmt(p.target_score)}</span>{_trained(p)}</td>'
            f"<td>{mask}</td></tr>")
    return ("<table><tr><th>pair</th><th>base (loser)</th><th>reference + item mask</th><th>target (winner)</th>"
            "<th>mask</th></tr>" + "".join(rows) + "</table>")


def gallery(samples: Sequence[SampleRecord], url: Callable[[str], str]) -> str:
    figs = [f'<figure><img src="{escape(url(s.image_key))}" alt="{escape(s.id)}" loading="lazy">'
            f'{escape(s.id)} · v{escape(s.policy_version)} · {fmt(s.score)}</figure>' for s in samples]
    return '<div class="gallery">' + "".join(figs) + "</div>"


def score_histograms(samples: Sequence[SampleRecord]) -> str:
    epochs = sorted({s.epoch for s in samples})
    return charts.embed_all([
        charts.score_histogram(e, [s.score for s in samples if s.epoch == e and s.score is not None]) for e in epochs])


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
        rows.append(f'<tr><th>{escape(name.replace("_", " "))}</th><td>{bar}</td>'
                    f'<td id="count-{name}">{done}{f" / {total}" if total else ""}</td></tr>')
    return '<table class="progress">' + "".join(rows) + "</table>"


def metrics_table(metrics: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{m['epoch']}</td><td>{m['policy_version']}</td><td>{fmt(m.get('loss'))}</td>"
        f"<td>{fmt(m.get('margin'))}</td><td>{fmt(m.get('mean_sample_score'))}</td>"
        f"<td>{fmt(m.get('pairs_trained'))} / {fmt(m.get('pairs_total'))}</td>"
        f"<td>{fmt(m.get('target_win_rate'))}</td><td>{fmt(m.get('mean_target_gain'))}</td>"
        f"<td>{fmt(m.get('heldout_score'))}</td><td>{_own_prompts(m)}</td></tr>" for m in metrics)
    return ("<table><tr><th>epoch</th><th>version</th><th>loss</th><th>margin</th>"
            "<th>mean sample score</th><th>pairs trained</th><th>target win rate</th><th>mean target gain</th>"
            "<th>held-out score</th><th>own prompts, fresh noise: untrained → trained (95 % CI of the gain)</th>"
            f"</tr>{rows}</table>")


def _own_prompts(m: dict[str, Any]) -> str:
    """The train-caption evaluation of an epoch (workers/publish.py `train_captions`), or a dash."""
    if m.get("eval_score") is None:
        return fmt(None)
    lo, hi = m.get("eval_diff_ci_low"), m.get("eval_diff_ci_high")
    ci = f" ({lo:+.4f} to {hi:+.4f})" if lo is not None and hi is not None else ""
    return f"{fmt(m.get('eval_score_base'))} → {fmt(m['eval_score'])}{ci}"


def write_report(path: Path, spec: JobSpec, samples: Sequence[SampleRecord], pairs: Sequence[PairRecord],
                 metrics: list[dict[str, Any]], url: Callable[[str], str]) -> None:
    body = (
        f"<h1>dfusion run</h1><p>model <b>{escape(spec.model)}</b> · {len(spec.prompts)} prompts × "
        f"{spec.samples_per_prompt} samples × {spec.epochs} epochs · pairs: {escape(spec.training.pairs)} · "
        f"loss: {escape(spec.training.algorithm)}</p>"
        f"<h2>Training</h2>{metrics_table(metrics)}{curves(metrics)}"
        f"<h2>Pairs</h2>{pair_rows(pairs, url)}<h2>Scores</h2>{score_histograms(samples)}"
        f"<h2>Samples</h2>{gallery(samples, url)}")
    path.write_text(page("dfusion run", body, head=charts.inline_scripts()))
