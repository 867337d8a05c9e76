"""Run a toy script with one part of fusion or scoring replaced by a probe (research; nothing shipped).

    .venv/bin/python scripts/toy_fusion_probe.py --oracle-masks any bench/fusion_quality.py --captions 24 --seed 1

`--oracle-masks any|quarter`: fusion's item masks are the reference image's true objects on the
8x8 token grid (a cell is on where any pixel, or a quarter of its 16, is the object's, as
`toy.scorer.object_masks` reads it), the same at every step, instead of the reference's
thresholded cross-attention. What a model whose item maps were exact would give: the bound on
training for sharper item maps (bench/RESULTS.md, "Fusion on the toy DiT").

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
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfusion_core import attention, pipeline  # noqa: E402
from dfusion_core.toy import scorer as ts  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--oracle-masks", choices=sorted(CELL_SHARE))
    p.add_argument("--own-queries", action="store_true")
    p.add_argument("script", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    with ExitStack() as probes:
        if args.oracle_masks:
            probes.enter_context(oracle_masks(args.oracle_masks))
        if args.own_queries:
            probes.enter_context(own_queries())
        sys.argv = [str(args.script), *args.args]
        sys.path.insert(0, str(args.script.resolve().parent))
        runpy.run_path(str(args.script), run_name="__main__")


if __name__ == "__main__":
    main()
