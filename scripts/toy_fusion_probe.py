"""Run a toy script with one part of fusion or scoring replaced by a probe (research; nothing shipped).

    .venv/bin/python scripts/toy_fusion_probe.py --oracle-masks any bench/fusion_quality.py --captions 24 --seed 1
    .venv/bin/python scripts/toy_fusion_probe.py --template-shapes bench/toy_facts.py shipped

`--oracle-masks any|quarter`: fusion's item masks are the reference image's true objects on the
8x8 token grid (a cell is on where any pixel, or a quarter of its 16, is the object's, as
`toy.scorer.object_masks` reads it), the same at every step, instead of the reference's
thresholded cross-attention. What a model whose item maps were exact would give: the bound on
training for sharper item maps (bench/RESULTS.md, "Fusion on the toy DiT").

`--template-shapes`: the scorer reads an object's shape as the world shape (any size, centred near
the blob) that overlaps the blob best, by IoU, instead of from how much of its bounding box it
fills, so a stray pixel or a ragged edge does not turn a square into a circle. Exact on clean
renders, like the shipped reader. What the fill reader's strictness costs the measures.

`--own-queries`: at fused blocks, a target query outside the mask reads the target's own keys and
values, and only a query inside it reads the blended ones, instead of every query reading the blend.
What a model whose self-attention were local would give: a cell the mask leaves out keeps its own
content, as it cannot in this DiT (its queries put a third to two thirds of their mass beyond their
3x3 neighbourhood: scripts/toy_fusion_carry.py --locality). Not the authors' method; a bound.

All are laid over the modules in this process only, before the script runs.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfusion_core import attention, pipeline  # noqa: E402
from dfusion_core.toy import scorer as ts  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

CELL_SHARE = {"any": 1e-9, "quarter": 0.25}  # share of a cell's pixels that must be the object's
GRID = 8  # the toy DiT's token grid (32 px, 4-px patches)


def oracle_cells(image: np.ndarray, caption: str, mode: str) -> np.ndarray:
    """Boolean [GRID*GRID, 2]: the token cells of the caption's two objects in `image`."""
    return (ts.cell_shares(ts.object_masks(image, caption), GRID) >= CELL_SHARE[mode]).T


@contextmanager
def oracle_masks(mode: str) -> Iterator[None]:
    masks: dict[str, torch.Tensor] = {}
    fuse_pairs = pipeline.fuse_pairs

    def fuse_with_truth(model, references, bases, items, config, **kw):
        # the reference replays to its own image, so its objects are known up front
        masks["now"] = torch.from_numpy(np.stack([oracle_cells(t.image.numpy(), t.prompt, mode) for t in references]))
        return fuse_pairs(model, references, bases, items, config, **kw)

    def binarise(self, avg: torch.Tensor) -> torch.Tensor:
        return masks["now"].to(avg.device)

    with mock.patch.object(pipeline, "fuse_pairs", fuse_with_truth), \
            mock.patch.object(attention.FusionController, "binarise", binarise):
        yield


@contextmanager
def own_queries() -> Iterator[None]:
    fuse_kv, sdpa = attention.FusionController.fuse_kv, attention.F.scaled_dot_product_attention
    stash: dict[str, object] = {}

    def fuse_kv_keeping_own(self, name, key, value):
        fused_key, fused_value = fuse_kv(self, name, key, value)
        if fused_key is not key:  # this call fuses: the next attention blends by query
            mask = self._resized_mask(self.masks[self.tgt_step], key.shape[2]).to(key.dtype)[:, None, :, None]
            stash["now"] = (key, value, mask, self._slices("tgt"))
        return fused_key, fused_value

    def attend(query, key, value, *args, **kwargs):
        out = sdpa(query, key, value, *args, **kwargs)
        if "now" not in stash:
            return out
        own_key, own_value, mask, rows = stash.pop("now")  # type: ignore[misc]
        own = sdpa(query, own_key, own_value, *args, **kwargs)
        out = out.clone()
        for r in rows:
            out[r] = out[r] * mask + own[r] * (1 - mask)
        return out

    functional = SimpleNamespace(**{k: getattr(attention.F, k) for k in dir(attention.F) if not k.startswith("__")})
    functional.scaled_dot_product_attention = attend
    with mock.patch.object(attention.FusionController, "fuse_kv", fuse_kv_keeping_own), \
            mock.patch.object(attention, "F", functional):
        yield


@contextmanager
def template_shapes() -> Iterator[None]:
    halves = range(tw.MIN_HALF - 1, tw.MAX_HALF + 2)  # a drawn object may be a pixel off the world's sizes
    templates = {(s, h): tw.shape_mask(s, h, h, h, size=2 * h + 1).astype(np.float32) for s in tw.SHAPES for h in halves}

    def best_shape(blob: np.ndarray) -> str:
        ys, xs = np.nonzero(blob)
        cx, cy, area = int(round(xs.mean())), int(round(ys.mean())), float(blob.sum())
        pad = 10
        padded = np.pad(blob.astype(np.float32), pad)
        best, shape = -1.0, ""
        for (s, h), k in templates.items():
            windows = sliding_window_view(padded, k.shape)  # windows[y0, x0]: centre (y0 + h - pad, x0 + h - pad)
            # centres around the centroid; a triangle's centroid lies below its box's centre
            y0 = np.clip(np.arange(cy - 4, cy + 3) - h + pad, 0, windows.shape[0] - 1)
            x0 = np.clip(np.arange(cx - 2, cx + 3) - h + pad, 0, windows.shape[1] - 1)
            inter = np.tensordot(windows[y0[:, None], x0[None, :]], k, axes=([2, 3], [0, 1]))
            iou = float((inter / (area + k.sum() - inter)).max())
            if iou > best:
                best, shape = iou, s
        return shape

    @dataclass(frozen=True)
    class MatchedRegion(ts.Region):
        matched: str = ""

        @property
        def shape(self) -> str:
            return self.matched

    def segment(image: np.ndarray) -> dict[str, ts.Region]:
        nearest = ts._nearest_palette(image)
        out: dict[str, ts.Region] = {}
        for name, r in _segment(image).items():
            blob = ts._largest_component(nearest == ts._NAMES.index(name))
            out[name] = MatchedRegion(r.area, r.cx, r.cy, r.fill, r.aspect, best_shape(blob))
        return out

    _segment = ts.segment
    with mock.patch.object(ts, "segment", segment):
        yield


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--oracle-masks", choices=sorted(CELL_SHARE))
    p.add_argument("--template-shapes", action="store_true")
    p.add_argument("--own-queries", action="store_true")
    p.add_argument("script", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    with ExitStack() as probes:
        if args.oracle_masks:
            probes.enter_context(oracle_masks(args.oracle_masks))
        if args.template_shapes:
            probes.enter_context(template_shapes())
        if args.own_queries:
            probes.enter_context(own_queries())
        sys.argv = [str(args.script), *args.args]
        sys.path.insert(0, str(args.script.resolve().parent))
        runpy.run_path(str(args.script), run_name="__main__")


if __name__ == "__main__":
    main()
