"""The HTML pieces every dfusion page shares: the style sheet, the page shell, escaping and
small inline-SVG charts. Plain HTML, nothing fetched from the network, no torch.
"""

from __future__ import annotations

import html
from typing import Any

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

def escape(x: object) -> str:
    """Any value as HTML-escaped text."""
    return html.escape(str(x))


def fmt(x: Any) -> str:
    """A number to 4 decimals, None as a dash, anything else escaped."""
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else escape(x)


def line_chart(title: str, xs: list[float], ys: list[float | None], w: int = 320, h: int = 160) -> str:
    """A small SVG line chart; points with no value are left out."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    head = f'<figure><figcaption>{escape(title)}</figcaption><svg width="{w}" height="{h}" role="img" aria-label="{escape(title)}">'
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
    head = f'<figure><figcaption>{escape(title)}</figcaption><svg width="{w}" height="{h}" role="img" aria-label="{escape(title)}">'
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


def page(title: str, body: str, head: str = "") -> str:
    """A whole HTML document with the shared style; `head` adds elements to <head>."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style>{head}</head><body>{body}</body></html>")
