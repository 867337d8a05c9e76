"""The HTML pieces every dfusion page shares: the style sheet, the page shell and escaping.
Plain HTML, nothing fetched from the network, no torch (the charts: `reports.charts`).
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
.muted{color:#777}.charts{display:flex;gap:24px;flex-wrap:wrap}.charts figure{margin:0}
.charts figcaption{font-weight:600;margin-bottom:4px}
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


def human_bytes(n: int) -> str:
    """A size for people: `512 B`, `1.5 KiB`, `12.3 MiB` (binary units, one decimal past bytes)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, i = float(n), 0
    while abs(value) >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {units[i]}"


def page(title: str, body: str, head: str = "") -> str:
    """A whole HTML document with the shared style; `head` adds elements to <head>."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style>{head}</head><body>{body}</body></html>")
