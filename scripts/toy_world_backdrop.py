"""Run a toy-world script in a variant world whose scenes lie on a random dark backdrop (research).

    .venv/bin/python scripts/toy_world_backdrop.py scripts/train_toy.py --steps 1000 ... --out runs/bd1
    .venv/bin/python scripts/toy_world_backdrop.py bench/toy_facts.py runs/bd1
    .venv/bin/python scripts/toy_world_backdrop.py bench/fusion_quality.py --model runs/bd1

Why: in the shipped world every pixel that is not an object is black, so two samples of one caption
differ only in their objects, and a fused target can take its reference's objects only by moving
toward the reference as a whole. The distance gate (target-base at most half of reference-base) then
leaves fusion a half-carried, blurred object (in the shape world before the patterns, the scorer read
it as no shape: bench/RESULTS.md, "Fusion on the toy DiT", fusion broke a fifth of the shapes its
bases had). A photo is mostly
background, which D-Fusion keeps from the base while the items come from the reference. Here each
scene gets a backdrop drawn from the noise like a photo's: a linear gradient between two dark
colours (every channel 0..BACKDROP_MAX) in a random direction. The caption says nothing about it.
The scorer is unchanged: a backdrop pixel is nearer black than any object colour, so it reads as
background (checked on clean renders of every caption before the script runs). The variant is laid
over the world module in this process only; nothing is stored or shipped with it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world_variant import check_clean_renders, run  # noqa: E402  # beside this script

from dfusion_core.toy import world as tw  # noqa: E402

#: The brightest a backdrop channel gets: (32, 32, 32) is 55 from black and 78 from the nearest object
#: colour (a pattern's dark green), so the scorer's nearest-palette read keeps it background. (It was
#: 64 in the shape world, whose objects had no dark parts: bench/RESULTS.md's backdrop runs.)
BACKDROP_MAX = 32

_SAMPLE_SCENE, _RENDER = tw.sample_scene, tw.render


@dataclass(frozen=True)
class BackdropScene(tw.Scene):
    """A scene and its backdrop: colours at the gradient's two ends and its direction (radians)."""

    start: tuple[int, int, int] = (0, 0, 0)
    end: tuple[int, int, int] = (0, 0, 0)
    angle: float = 0.0


def backdrop(scene: BackdropScene, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the linear gradient from `start` to `end` along `angle`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    along = np.cos(scene.angle) * x + np.sin(scene.angle) * y
    frac = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    start, end = np.array(scene.start, np.float32), np.array(scene.end, np.float32)
    return np.rint(start + frac[..., None] * (end - start)).astype(np.uint8)


def sample_scene(caption, rng: np.random.Generator, size: int = tw.IMAGE_SIZE) -> BackdropScene:
    scene = _SAMPLE_SCENE(caption, rng, size)
    ends = rng.integers(0, BACKDROP_MAX + 1, size=(2, 3))
    return BackdropScene(scene.caption, scene.objects, tuple(int(v) for v in ends[0]),  # type: ignore[arg-type]
                         tuple(int(v) for v in ends[1]), float(rng.uniform(0, 2 * np.pi)))  # type: ignore[arg-type]


def render(scene: tw.Scene, size: int = tw.IMAGE_SIZE) -> np.ndarray:
    img = _RENDER(scene, size)
    if not isinstance(scene, BackdropScene):
        return img
    drawn = np.zeros((size, size), bool)
    for o in scene.objects:
        drawn |= tw.object_mask(o.cx, o.cy, o.half, size)
    return np.where(drawn[..., None], img, backdrop(scene, size))


def install() -> None:
    tw.sample_scene = sample_scene
    tw.render = render
    check_clean_renders('backdrop', per_caption=4)


def main() -> None:
    run(install, __doc__)


if __name__ == "__main__":
    main()
