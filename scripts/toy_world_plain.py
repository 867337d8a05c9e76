"""Run a toy-world script in a variant world where `plain` (no pattern) takes dotted's place (research).

    .venv/bin/python scripts/toy_world_plain.py scripts/train_toy.py --steps 100 ... --out runs/pat0
    .venv/bin/python scripts/toy_world_plain.py bench/toy_facts.py runs/pat0-75
    .venv/bin/python scripts/toy_world_plain.py bench/fusion_quality.py --model runs/pat0-75 --captions 24 --seed 1

Why: the pattern world was first tried with a plain square as one of its three patterns, and there
fusion carried a pattern over from a better reference as well as it does now, but 42 % of the pairs
tied (a reference no better than its base: nothing to carry, so P(target>base) over all pairs stayed
at 0.46 for a distance ratio of 0.51). A model that draws no pattern is right for every caption that
asks for a plain square, so many samples got every fact. Every object now has a pattern, and this
variant keeps the first world to measure against (bench/RESULTS.md, "The pattern world"). Its
reader is the one it was measured with: plain below a fifth of dark pixels, and no dotted. Laid over
the world and scorer modules in this process only; nothing is stored or shipped with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world_variant import check_clean_renders, run  # noqa: E402  # beside this script

from dfusion_core.toy import scorer as ts  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

_DARK_PIXELS = tw.dark_pixels


def dark_pixels(pattern: str, size: int = tw.IMAGE_SIZE) -> np.ndarray:
    if pattern == "plain":
        return np.zeros((size, size), bool)
    return _DARK_PIXELS(pattern, size)


def install() -> None:
    tw.PATTERNS = ("plain", "striped", "checked")
    tw.CAPTIONS = tw._all_captions()
    tw.dark_pixels = dark_pixels
    ts.PLAIN_BELOW = 0.2  # plain is a pattern here: clean renders 0 against 0.4-0.6
    ts.DOTTED_AT_MOST = 0.0  # there is no dotted: a patterned blob that is not striped is checked
    check_clean_renders("plain", per_caption=4)


def main() -> None:
    run(install, __doc__)


if __name__ == "__main__":
    main()
