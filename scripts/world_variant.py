"""What a toy-world variant script (toy_world_backdrop.py; toy_world_bar.py until the world's shapes gave
way to patterns) needs: the check that the scorer reads a variant's clean renders exactly, and
running a toy script in the variant."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable

import numpy as np

from dfusion_core.toy import scorer as ts
from dfusion_core.toy import world as tw


def check_clean_renders(variant: str, per_caption: int = 1) -> None:
    """Exit unless the scorer reads every fact of `per_caption` clean renders of every caption."""
    rng = np.random.default_rng(0)
    for caption in tw.CAPTIONS:
        for _ in range(per_caption):
            image = tw.render(tw.sample_scene(caption, rng))
            if not all(ts.caption_facts(image, caption)):
                raise SystemExit(f"the {variant} world's scorer misreads a clean render of {caption!r}")


def run(install: Callable[[], None], usage: str | None) -> None:
    """`python VARIANT.py SCRIPT [ARGS...]`: lay the variant over this process, then run SCRIPT as __main__."""
    if len(sys.argv) < 2:
        raise SystemExit(usage)
    install()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
