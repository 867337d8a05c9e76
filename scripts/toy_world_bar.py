"""Run a toy-world script in a variant world where a wide bar takes the square's place (research).

    .venv/bin/python scripts/toy_world_bar.py scripts/train_toy.py --steps 1000 ... --out runs/bar1
    .venv/bin/python scripts/toy_world_bar.py bench/toy_facts.py runs/bar1
    .venv/bin/python scripts/toy_world_bar.py bench/fusion_quality.py --model runs/bar1 [--guidance 2]

Why: in the shipped world fusion carries a square over from its reference 17 % of the time, against
62-67 % for circles and triangles (bench/RESULTS.md, "Fusion on the toy DiT"). This model's squares
and circles differ only in their corners, a few pixels of a 3-4-patch object. A bar (the object's
full width, half its height) differs from a circle at the scale of a patch, and the scorer reads it
from its bounding box's aspect ratio, so the question "do shapes that differ at the patch scale
move over?" can be asked without changing the shipped world. The variant is laid over the world and
scorer modules in this process only, before the script runs; nothing is stored or shipped with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world_variant import check_clean_renders, run  # noqa: E402  # beside this script

from dfusion_core.toy import scorer as ts  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

BAR_ASPECT = 1.6  # a bar's box is about 2:1 (11x5 to 15x7 px); a disc or triangle's is 1:1
_SHAPE_MASK = tw.shape_mask


def bar_shape_mask(shape: str, cx: int, cy: int, half: int, size: int = tw.IMAGE_SIZE) -> np.ndarray:
    if shape != "bar":
        return _SHAPE_MASK(shape, cx, cy, half, size)
    y, x = np.mgrid[0:size, 0:size]
    return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= max(2, half // 2))


def bar_world_shape(region: ts.Region) -> str:
    """A blob is a bar when its box is wide, else what the shipped scorer reads (there is no square)."""
    if region.aspect >= BAR_ASPECT:
        return "bar"
    return "circle" if region.fill >= ts.TRIANGLE_FILL else "triangle"


def install() -> None:
    tw.SHAPES = ("circle", "bar", "triangle")
    tw.CAPTIONS = tw._all_captions()
    tw.shape_mask = bar_shape_mask
    ts.Region.shape = property(bar_world_shape)  # type: ignore[assignment]
    check_clean_renders('bar')


def main() -> None:
    run(install, __doc__)


if __name__ == "__main__":
    main()
