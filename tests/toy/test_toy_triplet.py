"""scripts/toy_triplet.py (the README's picture) draws base | reference + mask | target."""

from __future__ import annotations

import numpy as np

from tests.toy.scriptload import load_script


def _script():
    return load_script("scripts/toy_triplet.py")


def test_three_panels_with_the_mask_tinted_red_on_the_reference() -> None:
    tt = _script()
    black = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 255  # the top half holds the items
    pair = {"base": black, "reference": black, "target": black + 200, "mask": mask,
            "base_score": 0.4, "reference_score": 0.8, "target_score": 0.8}
    image = np.asarray(tt.draw("a red striped square above a blue dotted square", pair))
    side, top = 32 * tt.SCALE, tt.LABEL_H
    ref_x = 8 + side + 8
    assert tuple(image[top + 5, ref_x + 5]) == (127, 15, 15)  # tinted: inside the mask
    assert tuple(image[top + side - 5, ref_x + 5]) == (0, 0, 0)  # outside it
    assert tuple(image[top + 5, 8 + 2 * (side + 8) + 5]) == (200, 200, 200)  # the target
