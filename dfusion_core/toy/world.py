"""The toy world's data: scenes of two coloured shapes, their captions and the fixed splits.

`render` draws a `Scene` (two objects, each a colour, a shape, a centre and a size) as uint8
[S, S, 3] on black; `sample_scene` places the objects of a caption such as "a red circle above a
blue square" (an attribute binding per object and a spatial relation, the analogues of the paper's
templates). `CAPTIONS` holds every caption of the world (two distinct colours, two distinct shapes,
two relations); `heldout_captions()` is a fixed split of combinations never shown in training,
`train_captions()` the rest. `TOY_FUSION` and `TOY_TRAINING` are the job settings measured for the
toy model. Pure numpy: importing this module loads no torch.

All randomness comes from an explicit `numpy.random.Generator`; nothing is seeded globally.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dfusion_core.errors import ConfigError

TOY = "toy"
IMAGE_SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
#: The first-named object is above or left of the second. "below" and "right of" say the same with the
#: objects named the other way round, and the world says it only one way: a toy DiT trained on all four
#: learnt the axis each word names but not which object goes on which side (a word that swaps the
#: objects is a second hop through its cross-attention), after 16,000 CPU steps (bench/RESULTS.md).
RELATIONS = ("above", "left of")
_SAID_THE_OTHER_WAY = {"below": "above", "right of": "left of"}
MIN_HALF, MAX_HALF = 5, 7  # object half-extent in pixels (objects 11..15 px across, 3-4 of the DiT's 4-pixel patches)
HELDOUT_MOD = 7  # one caption in about seven is held out (a fixed hash split)

#: Sampling for toy jobs (SamplingConfig fields): 10 DDIM steps, what the toy model is measured at
#: (bench/toy_facts.py, bench/fusion_quality.py); 32x32 scenes need no more.
TOY_SAMPLING: dict = {"num_steps": 10}

#: Fusion settings for the toy DiT (FusionConfig fields), measured by bench/fusion_quality.py
#: (bench/RESULTS.md, "The toy DiT"). Every block works on the 8x8 token grid, so the mask is cut
#: there. Item maps are close to flat (absolute probabilities say little), so each item's map keeps
#: its own top half (quantile 0.5). The second half of the blocks fuses (the transformer default,
#: as the authors fuse SD's decoder). On the shipped weights, 24 tuning captions x 8 samples (the
#: bench's --seed 1; its reported run is --seed 0): gain +0.12, P(target>base) 0.45, distance ratio
#: 0.48; mask level 0.6 +0.11, 0.44, 0.44; skipping 2 steps +0.08, 0.36, 0.35. Fusing every block
#: (on weights 500 steps further) gave +0.09 but a target that is nearly the reference (ratio 0.91).
#: Skipping 1 of 10 steps is the authors' 2 of 20. At a toy job's 32 samples none of 14 other
#: settings (mask levels 0.55-0.85, minmax masks, blocks 0..7 to 5..7) did better: every one with
#: P(target>base) >= 0.5 had a distance ratio >= 0.5, and every one under 0.5 had P <= 0.49
#: (bench/RESULTS.md, "Fusion on the toy DiT"). Fusing every block from a later step (0..7, 5 of 10
#: skipped) passed on the tuning captions (P 0.54, ratio 0.46) but not on the reported ones (P 0.45,
#: gain +0.099): what fusion fails to carry over is shapes, whichever the setting. At this preset the
#: reported captions read lower than the tuning ones only because more of their pairs tie (a
#: reference no better than its base: 13 % against 5 %); where the reference is better, P is 0.52 on both.
TOY_FUSION: dict = {"mask_resolution": 8, "mask_mode": "quantile", "mask_level": 0.5, "blocks": (4, 7),
                    "skip_first_steps": 1}

#: Training settings for toy jobs (TrainingConfig fields): Diffusion-DPO (its beta, 2500) on the final
#: images of each pair, 200 optimizer steps of 8 pairs an epoch at lr 3e-4. Trajectory DPO does not
#: move this model at any budget tried: on per-dimension mean log-probs its loss stays linear at
#: beta 0.1, so Adam's step size alone decides how far the policy goes, and past a few steps both
#: arms fall (bench/RESULTS.md, "Why trajectory DPO did not move..."). Diffusion-DPO's loss
#: saturates on pairs already learnt, and each step is one denoiser call per image, not one per
#: denoising step, so the many steps its few hundred pairs need fit a CPU. Chosen on validation
#: noise (the captions of job seeds 100 and 101, 16 validation seeds a caption): one epoch of 32
#: samples a caption, +0.029 to +0.037 on plain and fusion pairs in a scratch probe, and plain
#: -0.005, fusion +0.028 in bench/alignment.py --probe (bench/RESULTS.md, "The paper's protocol").
#: `sft_weight` 500 (the winners' own denoising error beside the DPO term) was chosen the same way:
#: after one epoch on those seeds, plain +0.017 and fusion +0.057 with it, -0.005 and +0.028 without
#: (`--probe --seeds 100 101 --training '{"sft_weight": 500}'`; 2000 did worse on seed 100).
TOY_TRAINING: dict = {"algorithm": "diffusion_dpo", "learning_rate": 3e-4, "batch_pairs": 8, "steps_per_epoch": 200,
                      "sft_weight": 500.0}

#: Samples per caption an epoch for toy jobs: best-vs-worst and D-Fusion pairs of 32 samples give each
#: of a few captions 16 pairs an epoch (about half survive the winner-beats-loser filter), enough
#: that 200 steps of 8 are some 30 passes, not hundreds.
TOY_SAMPLES_PER_PROMPT = 32

_CAPTION = re.compile(
    r"^an? (?P<c1>\w+) (?P<s1>\w+) (?P<rel>above|below|left of|right of) an? (?P<c2>\w+) (?P<s2>\w+)$"
)


@dataclass(frozen=True)
class Obj:
    """One shape: its colour and shape words, centre (cx, cy) in pixels and half-extent."""

    colour: str
    shape: str
    cx: int
    cy: int
    half: int


@dataclass(frozen=True)
class Caption:
    """A parsed caption: object A, the relation of A to B, object B (colours and shapes differ)."""

    colour_a: str
    shape_a: str
    relation: str
    colour_b: str
    shape_b: str

    @property
    def text(self) -> str:
        return f"a {self.colour_a} {self.shape_a} {self.relation} a {self.colour_b} {self.shape_b}"

    @property
    def items(self) -> list[str]:
        """The items D-Fusion masks on: each object's colour and shape ("red circle"). On the toy DiT
        the colour words' maps find the objects (mask IoU 0.41-0.44 against 0.27 for a full mask) and
        the shape nouns' alone do not (0.02-0.05): bench/RESULTS.md, "The toy DiT"."""
        return [f"{self.colour_a} {self.shape_a}", f"{self.colour_b} {self.shape_b}"]


@dataclass(frozen=True)
class Scene:
    caption: Caption
    objects: tuple[Obj, Obj]


def parse_caption(text: str) -> Caption:
    """'a red circle above a blue square' -> Caption; ConfigError for text outside the world."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        raise ConfigError("prompt", f"{text!r} is not a toy-world caption ('a red circle above a blue square')")
    c = Caption(m["c1"], m["s1"], m["rel"], m["c2"], m["s2"])
    if c.relation in _SAID_THE_OTHER_WAY:
        swapped = Caption(c.colour_b, c.shape_b, _SAID_THE_OTHER_WAY[c.relation], c.colour_a, c.shape_a).text
        raise ConfigError("prompt", f"the toy world says {text!r} the other way round: {swapped!r} "
                                    f"(its relations are {list(RELATIONS)})")
    for colour in (c.colour_a, c.colour_b):
        if colour not in COLOURS:
            raise ConfigError("prompt", f"unknown colour {colour!r} in {text!r}; the world has {list(COLOURS)}")
    for shape in (c.shape_a, c.shape_b):
        if shape not in SHAPES:
            raise ConfigError("prompt", f"unknown shape {shape!r} in {text!r}; the world has {list(SHAPES)}")
    if c.colour_a == c.colour_b or c.shape_a == c.shape_b:
        raise ConfigError("prompt", f"{text!r}: the two objects need different colours and shapes")
    return c


def _all_captions() -> tuple[str, ...]:
    out = []
    for ca in COLOURS:
        for sa in SHAPES:
            for rel in RELATIONS:
                for cb in COLOURS:
                    for sb in SHAPES:
                        if ca != cb and sa != sb:
                            out.append(Caption(ca, sa, rel, cb, sb).text)
    return tuple(out)


CAPTIONS: tuple[str, ...] = _all_captions()  # 144 captions


def is_heldout(text: str) -> bool:
    """The fixed held-out split: a hash of the caption, so it never depends on list order."""
    digest = hashlib.sha256(f"dfusion.toy:{text}".encode()).digest()
    return digest[0] % HELDOUT_MOD == 0


def heldout_captions() -> list[str]:
    return [c for c in CAPTIONS if is_heldout(c)]


def train_captions() -> list[str]:
    return [c for c in CAPTIONS if not is_heldout(c)]


def shape_mask(shape: str, cx: int, cy: int, half: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask: a filled square, disc or upward triangle (bounding box 2*half+1)."""
    y, x = np.mgrid[0:size, 0:size]
    dx, dy = x - cx, y - cy
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "circle":
        return dx * dx + dy * dy <= (half + 0.5) ** 2
    if shape == "triangle":  # apex at the top, base at the bottom: half-width grows linearly
        frac = (dy + half) / (2 * half)
        return (np.abs(dy) <= half) & (np.abs(dx) <= frac * half + 0.5)
    raise ConfigError("shape", f"unknown shape {shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the objects drawn in order on black."""
    img = np.zeros((size, size, 3), np.uint8)
    for o in scene.objects:
        img[shape_mask(o.shape, o.cx, o.cy, o.half, size)] = COLOURS[o.colour]
    return img


def sample_scene(caption: str | Caption, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Place the caption's objects: A in the half of the image its relation names, B in the other."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    halves = rng.integers(MIN_HALF, MAX_HALF + 1, size=2)
    mid = size // 2
    centres = []
    for k, h in enumerate(halves):
        h = int(h)
        first = k == 0  # the first-named object goes in the top / left half
        lo, hi = (h, mid - 1 - h) if first else (mid + h, size - 1 - h)
        along = int(rng.integers(lo, hi + 1))
        across = int(rng.integers(h, size - h))
        centres.append((across, along) if c.relation == "above" else (along, across))
    a = Obj(c.colour_a, c.shape_a, centres[0][0], centres[0][1], int(halves[0]))
    b = Obj(c.colour_b, c.shape_b, centres[1][0], centres[1][1], int(halves[1]))
    return Scene(c, (a, b))


def make_batch(
    captions: Sequence[str], rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """uint8 [B, size, size, 3]: one fresh scene per caption."""
    return np.stack([render(sample_scene(c, rng, size), size) for c in captions])
