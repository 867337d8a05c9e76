"""Exact alignment for the toy world: colours, shapes and the relation read back from pixels.

`ToyScorer` returns the fraction of the caption's five facts that hold (colour of A present, A's
shape, colour of B present, B's shape, the relation between them): 1.0 for a faithful render, in
[0, 1] always. `object_masks` gives where the caption's objects are, as the scorer sees them, and
`mask_iou` compares a fusion mask with them. Built by name as the `toy` scorer (dfusion_core/registry.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.toy.world import COLOURS, Caption, parse_caption

_PALETTE = np.array([(0, 0, 0), *COLOURS.values()], np.float32)  # index 0 = background
_NAMES = ("background", *COLOURS)
MIN_AREA = 12  # pixels a colour needs to count as an object (a 9x9 triangle has about 45)
SQUARE_FILL, TRIANGLE_FILL = 0.93, 0.7  # fill ratio of the bounding box: square 1, disc 0.80-0.85, triangle 0.57-0.61
RELATION_MARGIN = 2.0  # pixels between centroids for a relation to hold


@dataclass(frozen=True)
class Region:
    """The largest 4-connected blob of one colour: area, centroid (x, y), bounding-box fill ratio and
    the box's aspect ratio (width / height; the world's shapes have square boxes)."""

    area: int
    cx: float
    cy: float
    fill: float
    aspect: float

    @property
    def shape(self) -> str:
        if self.fill >= SQUARE_FILL:
            return "square"
        return "circle" if self.fill >= TRIANGLE_FILL else "triangle"


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (iterative min-label propagation)."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        prev = labels
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                   padded[1:-1, :-2], padded[1:-1, 2:]])
        labels = np.where(mask, neigh, big)
        if np.array_equal(labels, prev):
            break
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def _nearest_palette(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W]: each pixel's nearest palette entry (0 = background)."""
    return ((image.astype(np.float32)[:, :, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)


def segment(image: np.ndarray) -> dict[str, Region]:
    """uint8 [H, W, 3] -> the colours present (largest blob of >= MIN_AREA pixels each)."""
    nearest = _nearest_palette(image)
    out: dict[str, Region] = {}
    for k in range(1, len(_NAMES)):
        mask = nearest == k
        if mask.sum() < MIN_AREA:
            continue
        blob = _largest_component(mask)
        area = int(blob.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(blob)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        out[_NAMES[k]] = Region(area, float(xs.mean()), float(ys.mean()), area / float(w * h), float(w / h))
    return out


def object_masks(image: np.ndarray, caption: str | Caption) -> np.ndarray:
    """Boolean [2, H, W]: where the caption's two objects are in an image, as the scorer sees them
    (the largest blob of each object's colour; all False when the colour is absent). The ground
    truth that item masks are measured against."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    nearest = _nearest_palette(image)
    out = np.zeros((2, *image.shape[:2]), bool)
    for k, colour in enumerate((c.colour_a, c.colour_b)):
        mask = nearest == _NAMES.index(colour)
        if mask.sum() >= MIN_AREA:
            out[k] = _largest_component(mask)
    return out


def mask_iou(item_masks: torch.Tensor, resolution: int, truth: np.ndarray) -> float:
    """IoU of a fusion mask with the truth: the union of item masks [R*R, items] on the RxR grid,
    nearest-upsampled to the image, against boolean `truth` [S, S] (e.g. `object_masks(...).any(0)`)."""
    union = item_masks.amax(-1).reshape(resolution, resolution).cpu().numpy() > 0
    up = np.kron(union, np.ones((truth.shape[0] // resolution, truth.shape[1] // resolution), bool))
    inter, either = (up & truth).sum(), (up | truth).sum()
    return float(inter / either) if either else 1.0


def cell_shares(masks: np.ndarray, grid: int) -> np.ndarray:
    """Boolean masks [..., S, S] -> [..., grid*grid]: the share of each cell's pixels a mask covers,
    the image cut into grid x grid cells, row by row (a DiT's token order for grid x grid patches)."""
    *lead, size, _ = masks.shape
    side = size // grid
    return masks.reshape(*lead, grid, side, grid, side).mean((-3, -1)).reshape(*lead, grid * grid)


def relation_holds(relation: str, a: Region, b: Region, margin: float = RELATION_MARGIN) -> bool:
    if relation == "above":
        return a.cy < b.cy - margin
    if relation == "below":
        return a.cy > b.cy + margin
    if relation == "left of":
        return a.cx < b.cx - margin
    if relation == "right of":
        return a.cx > b.cx + margin
    raise ConfigError("relation", f"unknown relation {relation!r}")


def caption_facts(image: np.ndarray, caption: str | Caption) -> list[bool]:
    """The caption's five facts read from the image: A's colour, A's shape, B's colour, B's shape, relation."""
    return region_facts(segment(image), caption)


def region_facts(regions: dict[str, Region], caption: str | Caption) -> list[bool]:
    """`caption_facts` from an image's `segment` regions (for a reader that also wants the regions)."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    a, b = regions.get(c.colour_a), regions.get(c.colour_b)
    return [
        a is not None,
        a is not None and a.shape == c.shape_a,
        b is not None,
        b is not None and b.shape == c.shape_b,
        a is not None and b is not None and relation_holds(c.relation, a, b),
    ]


class ToyScorer:
    """Exact alignment for the toy world: the fraction of the caption's five facts the pixels satisfy."""

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ConfigError("images", f"expected uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ConfigError("prompts", f"{len(prompts)} prompts for {images.shape[0]} images")
        arr = images.cpu().numpy()
        return torch.tensor([float(np.mean(caption_facts(img, p))) for img, p in zip(arr, prompts, strict=True)],
                            dtype=torch.float32)


def build_toy_scorer(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ToyScorer:
    """The exact toy-world scorer (pure numpy on the CPU; device and dtype are ignored)."""
    return ToyScorer()
