"""The README reads in a minute: its first screen has the picture, the two commands and what the
demo prints; its sections stay short; every file it or docs/ points at exists."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    title = "(top)"
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
        out.setdefault(title, []).append(line)
    return out


def test_first_screen_has_the_picture_the_commands_and_the_demo_ending() -> None:
    first = "\n".join(README.splitlines()[:50])
    assert "![" in first and "(docs/toy-triplet.png)" in first
    assert "make demo" in first and "make test" in first
    assert re.search(r"^dfusion demo: \d+ epoch\(s\) trained$", first, re.M) and "report: demo-run/report.html" in first
    with Image.open(ROOT / "docs" / "toy-triplet.png") as image:
        assert image.width > 2 * image.height  # three panels side by side


def test_sections_are_short_and_the_three_starts_are_there() -> None:
    sections = _sections(README)
    long = {title: len(lines) for title, lines in sections.items() if len(lines) > 27}
    assert not long, long
    starts = [title for title in sections if title.startswith("Start ")]
    assert len(starts) == 3 and "docker compose" in starts[2]


def test_every_relative_link_resolves() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} -> {target}"
