"""The toy world's data: scenes of two coloured, patterned squares, their captions and the fixed splits.

`render` draws a `Scene` (two objects, each a colour, a pattern, a centre and a size) as uint8
[S, S, 3] on black; `sample_scene` places the objects of a caption such as "a red striped square
above a blue dotted square" (an attribute binding per object and a spatial relation, the analogues
of the paper's templates). `CAPTIONS` holds every caption of the world (two distinct colours, two
distinct patterns, two relations); `heldout_captions()` is a fixed split of combinations never shown in training,
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
#: The per-object attribute besides colour. A pattern lives inside each 4-pixel token of the DiT (the
#: dark part at DARK of the object's colour: two rows of four, 2x2 checks, or one 2x2 dot, aligned to
#: the image), so it is appearance, which D-Fusion carries from a reference through self-attention
#: keys and values while the target's own queries keep its layout. Every object has one: a sample
#: that draws a plain square misses the fact whatever the caption asks, so few samples get every fact
#: and few pairs tie (a tied pair has nothing to carry over). The world had shapes here until
#: 2026-12-08: a shape is layout, and fusion carried it 42-49 % of the time and broke a fifth of those
#: its bases had; it carries a pattern about two times in three and breaks 4-7 % (bench/RESULTS.md,
#: "The pattern world").
PATTERNS = ("striped", "checked", "dotted")
#: Brightness of a pattern's dark part: dark red (126, 22, 22) is 130 from black and 107 from red,
#: so the scorer's nearest-palette read keeps both parts one object.
DARK = 0.55
#: Each colour's dark part, the one place it is computed (float32, as the renders always were).
DARK_COLOURS: dict[str, tuple[int, ...]] = {
    name: tuple(int(v) for v in np.rint(np.array(rgb, np.float32) * DARK)) for name, rgb in COLOURS.items()
}
#: The first-named object is above or left of the second. "below" and "right of" say the same with the
#: objects named the other way round, and the world says it only one way: a toy DiT trained on all four
#: learnt the axis each word names but not which object goes on which side (a word that swaps the
#: objects is a second hop through its cross-attention), after 16,000 CPU steps (bench/RESULTS.md).
RELATIONS = ("above", "left of")
_SAID_THE_OTHER_WAY = {"below": "above", "right of": "left of"}
MIN_HALF, MAX_HALF = 5, 7  # object half-extent in pixels (squares 11..15 px across, 3-4 of the DiT's 4-pixel patches)
HELDOUT_MOD = 7  # one caption in about seven is held out (a fixed hash split)

#: Sampling for toy jobs (SamplingConfig fields): 10 DDIM steps, what the toy model is measured at
#: (bench/toy_facts.py, bench/fusion_quality.py); 32x32 scenes need no more.
TOY_SAMPLING: dict = {"num_steps": 10}

#: Fusion settings for the toy DiT (FusionConfig fields), measured by bench/fusion_quality.py
#: (bench/RESULTS.md, "The pattern world"). Every block works on the 8x8 token grid, so the mask is
#: cut there. Item maps are close to flat (absolute probabilities say little), so each item's map
#: keeps its own top half (quantile 0.5). The second half of the blocks fuses (the transformer
#: default, as the authors fuse SD's decoder). The first 3 of 10 steps are left unfused (the authors
#: leave 2 of 20): where the objects go is decided in them, and a target fused from step 2 takes its
#: reference's places too (on a pattern-world model with a plain pattern, 24 captions: ratio 0.64
#: against 0.38 with 3 skipped), while a pattern is still carried over from a later step. On the
#: shipped weights, 24 tuning captions x 32 samples (the bench's --seed 1; its reported run is
#: --seed 0): 3 skipped, gain +0.15, P(target>base) 0.61, distance ratio 0.39; 2 skipped +0.16,
#: 0.63, 0.51.
TOY_FUSION: dict = {"mask_resolution": 8, "mask_mode": "quantile", "mask_level": 0.5, "blocks": (4, 7),
                    "skip_first_steps": 3}

#: Training settings for toy jobs (TrainingConfig fields): Diffusion-DPO (its beta, 2500) on the final
#: images of each pair, with the winners' own denoising error beside it (`sft_weight` 500), steps of
#: 8 pairs at lr 6e-4, at most 5 passes over the pairs the filter kept (`max_passes`; 200 steps bound
#: it only past 320 kept pairs). The budget is in passes because a fixed 200 steps broke captions the
#: model already drew well: there few fused targets beat their bases, the filter keeps 26-40 of 64
#: pairs, and 200 steps are 40-60 passes over them. Chosen on validation noise (bench/RESULTS.md,
#: "A budget in passes"): `bench/alignment.py --probe --seeds 100 101 102 --prompts 4`, 16 validation
#: seeds a caption, fusion - untrained after one epoch, mean of the three seeds: 200 steps -0.141,
#: 20 passes -0.008, 10 passes +0.016, 5 passes +0.021, 3 passes +0.011, and 5 passes at lr 6e-4
#: +0.025 (plain pairs +0.020). Trajectory DPO does not move this model at any budget tried: on
#: per-dimension mean log-probs its loss stays linear at beta 0.1, so Adam's step size alone decides
#: how far the policy goes (bench/RESULTS.md, "Why trajectory DPO did not move..."). `sft_weight` 500
#: was chosen on the shape world's validation noise (plain +0.017 and fusion +0.057 with it after one
#: epoch, -0.005 and +0.028 without; `--probe --seeds 100 101 --training '{"sft_weight": 500}'`).
TOY_TRAINING: dict = {"algorithm": "diffusion_dpo", "learning_rate": 6e-4, "batch_pairs": 8, "steps_per_epoch": 200,
                      "max_passes": 5.0, "sft_weight": 500.0}

#: Samples per caption an epoch for toy jobs: best-vs-worst and D-Fusion pairs of 32 samples give each
#: of a few captions 16 pairs an epoch (about half survive the winner-beats-loser filter).
TOY_SAMPLES_PER_PROMPT = 32

_CAPTION = re.compile(
    r"^an? (?P<c1>\w+) (?P<p1>\w+) square (?P<rel>above|below|left of|right of) an? (?P<c2>\w+) (?P<p2>\w+) square$"
)


@dataclass(frozen=True)
class Obj:
    """One square: its colour and pattern words, centre (cx, cy) in pixels and half-extent."""

    colour: str
    pattern: str
    cx: int
    cy: int
    half: int


@dataclass(frozen=True)
class Caption:
    """A parsed caption: object A, the relation of A to B, object B (colours and patterns differ)."""

    colour_a: str
    pattern_a: str
    relation: str
    colour_b: str
    pattern_b: str

    @property
    def text(self) -> str:
        return f"a {self.colour_a} {self.pattern_a} square {self.relation} a {self.colour_b} {self.pattern_b} square"

    @property
    def items(self) -> list[str]:
        """The items D-Fusion masks on: each object's colour and pattern words ("red striped"). On the
        toy DiT the colour words' maps find the objects and the other words' alone do not
        (bench/RESULTS.md, "The toy DiT")."""
        return [f"{self.colour_a} {self.pattern_a}", f"{self.colour_b} {self.pattern_b}"]


@dataclass(frozen=True)
class Scene:
    caption: Caption
    objects: tuple[Obj, Obj]


def parse_caption(text: str) -> Caption:
    """'a red striped square above a blue dotted square' -> Caption; ConfigError for text outside the world."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        raise ConfigError("prompt", f"{text!r} is not a toy-world caption ('a red striped square above a blue "
                                    f"dotted square')")
    c = Caption(m["c1"], m["p1"], m["rel"], m["c2"], m["p2"])
    if c.relation in _SAID_THE_OTHER_WAY:
        swapped = Caption(c.colour_b, c.pattern_b, _SAID_THE_OTHER_WAY[c.relation], c.colour_a, c.pattern_a).text
        raise ConfigError("prompt", f"the toy world says {text!r} the other way round: {swapped!r} "
                                    f"(its relations are {list(RELATIONS)})")
    for colour in (c.colour_a, c.colour_b):
        if colour not in COLOURS:
            raise ConfigError("prompt", f"unknown colour {colour!r} in {text!r}; the world has {list(COLOURS)}")
    for pattern in (c.pattern_a, c.pattern_b):
        if pattern not in PATTERNS:
            raise ConfigError("prompt", f"unknown pattern {pattern!r} in {text!r}; the world has {list(PATTERNS)}")
    if c.colour_a == c.colour_b or c.pattern_a == c.pattern_b:
        raise ConfigError("prompt", f"{text!r}: the two objects need different colours and patterns")
    return c


def _all_captions() -> tuple[str, ...]:
    out = []
    for ca in COLOURS:
        for pa in PATTERNS:
            for rel in RELATIONS:
                for cb in COLOURS:
                    for pb in PATTERNS:
                        if ca != cb and pa != pb:
                            out.append(Caption(ca, pa, rel, cb, pb).text)
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


def object_mask(cx: int, cy: int, half: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size]: an object's filled square (side 2*half+1)."""
    y, x = np.mgrid[0:size, 0:size]
    return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)


def dark_pixels(pattern: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size]: where a pattern is dark, aligned to the image so every token holds the same."""
    y, x = np.mgrid[0:size, 0:size]
    if pattern == "striped":
        return (y // 2) % 2 == 1
    if pattern == "checked":
        return (x // 2 + y // 2) % 2 == 1
    if pattern == "dotted":
        return ((x // 2) % 2 == 1) & ((y // 2) % 2 == 1)
    raise ConfigError("pattern", f"unknown pattern {pattern!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the objects drawn in order on black."""
    img = np.zeros((size, size, 3), np.uint8)
    for o in scene.objects:
        pixels = np.where(dark_pixels(o.pattern, size)[..., None], np.array(DARK_COLOURS[o.colour], np.uint8),
                          np.array(COLOURS[o.colour], np.uint8))
        inside = object_mask(o.cx, o.cy, o.half, size)
        img[inside] = pixels[inside]
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
    a = Obj(c.colour_a, c.pattern_a, centres[0][0], centres[0][1], int(halves[0]))
    b = Obj(c.colour_b, c.pattern_b, centres[1][0], centres[1][1], int(halves[1]))
    return Scene(c, (a, b))


def make_batch(
    captions: Sequence[str], rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """uint8 [B, size, size, 3]: one fresh scene per caption."""
    return np.stack([render(sample_scene(c, rng, size), size) for c in captions])
