"""Exact alignment for the toy world: colours, patterns and the relation read back from pixels.

`ToyScorer` returns the fraction of the caption's five facts that hold (colour of A present, A's
pattern, colour of B present, B's pattern, the relation between them): 1.0 for a faithful render, in
[0, 1] always. `object_masks` gives where the caption's objects are, as the scorer sees them, and
`mask_iou` compares a fusion mask with them. Built by name as the `toy` scorer (dfusion_core/registry.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.toy.world import COLOURS, DARK_COLOURS, Caption, parse_caption

#: background, each colour, then each colour's dark part (a pattern's dark pixels)
_PALETTE = np.array([(0, 0, 0), *COLOURS.values(), *DARK_COLOURS.values()], np.float32)
_NAMES = ("background", *COLOURS)
MIN_AREA = 12  # pixels a colour needs to count as an object (the smallest square has 121)
RELATION_MARGIN = 2.0  # pixels between centroids for a relation to hold
PLAIN_BELOW = 0.1  # a blob with a smaller share of dark pixels has no pattern (clean renders: dotted 0.2-0.3, others 0.4-0.6)
STRIPE_MARGIN = 0.3  # striped when the blob's rows are this much purer than its columns (clean: 1.0 against <= 0.2)
DOTTED_AT_MOST = 0.37  # a blob no darker than this that is not striped is dotted (clean: 0.2-0.3 against checks' 0.4-0.6)


@dataclass(frozen=True)
class Region:
    """The largest 4-connected blob of one colour (bright and dark pixels together): area, centroid
    (x, y), bounding-box fill ratio, the box's aspect ratio (width / height; the world's squares have
    1) and the pattern its dark pixels make."""

    area: int
    cx: float
    cy: float
    fill: float
    aspect: float
    pattern: str


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


def _nearest_palette(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> (int [H, W]: each pixel's nearest colour, 0 = background; bool [H, W]: nearer
    that colour's dark half than its bright one)."""
    k = ((image.astype(np.float32)[:, :, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    n = len(COLOURS)
    return np.where(k == 0, 0, (k - 1) % n + 1), k > n


def _purity(dark: np.ndarray, blob: np.ndarray, axis: int) -> float:
    """Mean over the blob's rows (axis 1) or columns (axis 0) of |2 x dark share - 1|: 1 when each is all
    bright or all dark (stripes along it), near 0 when each is half and half. Lines with fewer than 3
    of the blob's pixels are left out (a ragged edge is not a stripe)."""
    n = blob.sum(axis)
    share = (dark & blob).sum(axis)[n >= 3] / n[n >= 3]
    return float(np.abs(2 * share - 1).mean()) if share.size else 0.0


def read_pattern(dark: np.ndarray, blob: np.ndarray) -> str:
    """The pattern of a blob: "plain" (none of the world's) when few of its pixels are dark, striped
    when its rows are each mostly one or the other and its columns are not, else dotted or checked by
    how much of it is dark."""
    share = (dark & blob).sum() / blob.sum()
    if share < PLAIN_BELOW:
        return "plain"
    if _purity(dark, blob, 1) >= _purity(dark, blob, 0) + STRIPE_MARGIN:
        return "striped"
    return "dotted" if share <= DOTTED_AT_MOST else "checked"


def segment(image: np.ndarray) -> dict[str, Region]:
    """uint8 [H, W, 3] -> the colours present (largest blob of >= MIN_AREA pixels each)."""
    nearest, dark = _nearest_palette(image)
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
        out[_NAMES[k]] = Region(area, float(xs.mean()), float(ys.mean()), area / float(w * h), float(w / h),
                                read_pattern(dark, blob))
    return out


def object_masks(image: np.ndarray, caption: str | Caption) -> np.ndarray:
    """Boolean [2, H, W]: where the caption's two objects are in an image, as the scorer sees them
    (the largest blob of each object's colour; all False when the colour is absent). The ground
    truth that item masks are measured against."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    nearest = _nearest_palette(image)[0]
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
    """The caption's five facts read from the image: A's colour, A's pattern, B's colour, B's pattern, relation."""
    return region_facts(segment(image), caption)


def region_facts(regions: dict[str, Region], caption: str | Caption) -> list[bool]:
    """`caption_facts` from an image's `segment` regions (for a reader that also wants the regions)."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    a, b = regions.get(c.colour_a), regions.get(c.colour_b)
    return [
        a is not None,
        a is not None and a.pattern == c.pattern_a,
        b is not None,
        b is not None and b.pattern == c.pattern_b,
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
