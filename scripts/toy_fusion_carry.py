"""How far fusion moves a base toward its reference, property by property (research; nothing shipped).

    .venv/bin/python scripts/toy_fusion_carry.py [--model toy|FOLDER] [--captions 12] [--seed 1] [--mask-level 0.5]
    .venv/bin/python scripts/toy_world_backdrop.py scripts/toy_fusion_carry.py --model runs/bd1   # in a variant world

Samples, pairs and fuses like bench/fusion_quality.py (its caption draw for --seed, a toy job's 32
samples a caption, the toy preset unless told otherwise), then reads each pair's three images:
- per object (the largest blob of its colour in base, reference and target): its area and centroid.
  `carry` is the least-squares slope of (target - base) on (reference - base) over every object
  present in all three: 1 when the target takes the reference's value, 0 when it keeps the base's;
  `past_half` the share, of objects whose value differs by more than `--min-move`, whose target
  went more than half the way.
- the pixel distance split into the objects' pixels (either image's) and the rest: how far the
  target moves toward the reference on each, as target-base over reference-base.
The question it answers: would a per-object property at the layout's scale (size, place) be carried
more often than shape is, and does the target keep its base's background where there is one?

`--locality` instead reads how local each block's self-attention is while the model samples (no
fusion): the probability mass a query puts on its own token cell and on its 3x3 neighbourhood, and
the entropy, against a uniform map's 1/64, 9/64 (less at the edges) and ln 64. Fusion swaps the
keys and values of the masked cells for the reference's, and every query (masked or not) reads them
with its own attention: the less local it is, the more an unmasked cell takes from the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fusion_quality import draw, fuse_caption, load  # noqa: E402
from dfusion_core import pipeline  # noqa: E402
from dfusion_core.config import FusionConfig, SamplingConfig  # noqa: E402
from dfusion_core.toy import scorer as ts  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

PROPERTIES = ("area", "cx", "cy")
MIN_MOVE = {"area": 60.0, "cx": 5.0, "cy": 5.0}  # a difference worth asking about: about a 4-px patch's worth


def pair_records(model, caption: str, seeds: list[int], sampling: SamplingConfig,
                 fusion: FusionConfig) -> list[dict[str, Any]]:
    """One record per pair: each object's (area, cx, cy) in reference, base and target (None where
    its colour is missing), and the summed absolute pixel differences on objects and elsewhere."""
    c = tw.parse_caption(caption)
    images, _, plans, fused = fuse_caption(model, caption, seeds, sampling, fusion)
    out = []
    for p, f in zip(plans, fused, strict=True):
        views = {"reference": images[p.reference].numpy(), "base": images[p.base].numpy(), "target": f.target.image.numpy()}
        rec: dict[str, Any] = {}
        for name, image in views.items():
            regions = ts.segment(image)
            rec[name] = [[regions[col].area, regions[col].cx, regions[col].cy] if col in regions else None
                         for col in (c.colour_a, c.colour_b)]
        objects = ts.object_masks(views["reference"], c).any(0) | ts.object_masks(views["base"], c).any(0)
        ref, base, tgt = (views[k].astype(np.float32) / 255 for k in ("reference", "base", "target"))
        for part, where in (("objects", objects), ("rest", ~objects)):
            rec[part] = {"pixels": int(where.sum()), "target_base": float(np.abs(tgt - base)[where].sum()),
                         "reference_base": float(np.abs(ref - base)[where].sum())}
        out.append(rec)
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    carry = {}
    for k, prop in enumerate(PROPERTIES):
        moved = np.array([[r["reference"][o][k] - r["base"][o][k], r["target"][o][k] - r["base"][o][k]]
                          for r in records for o in range(2)
                          if r["reference"][o] and r["base"][o] and r["target"][o]], np.float64).reshape(-1, 2)
        wanted, got = moved[:, 0], moved[:, 1]
        far = np.abs(wanted) > MIN_MOVE[prop]
        carry[prop] = {"objects": len(moved),
                       "carry": float((wanted * got).sum() / (wanted**2).sum()) if (wanted**2).sum() else None,
                       "past_half": float((got[far] / wanted[far] > 0.5).mean()) if far.any() else None,
                       "far": int(far.sum())}
    pixels = sum(r["objects"]["pixels"] + r["rest"]["pixels"] for r in records)
    split = {}
    for part in ("objects", "rest"):
        n = sum(r[part]["pixels"] for r in records) * 3
        tb, rb = (sum(r[part][key] for r in records) for key in ("target_base", "reference_base"))
        split[part] = {"share_of_pixels": n / 3 / pixels, "target_base": tb / n, "reference_base": rb / n,
                       "ratio": tb / rb if rb else None}
    return {"pairs": len(records), "carry": carry, "distance": split}


def attention_locality(model, captions: list[str], seeds: list[int], sampling: SamplingConfig) -> list[dict[str, float]]:
    """Per transformer block: mean own-cell mass, 3x3-neighbourhood mass and entropy (nats) of its
    self-attention maps over every step, CFG half, head and query of sampling `captions`."""
    from diffusers.models.attention_processor import AttnProcessor

    blocks = model.unet.transformer_blocks
    side = int(round(model.unet.config.sample_size / model.unet.config.patch_size))
    row, col = np.divmod(np.arange(side * side), side)
    cheb = np.maximum(np.abs(row[:, None] - row[None]), np.abs(col[:, None] - col[None]))
    own, near = torch.from_numpy(cheb == 0).float(), torch.from_numpy(cheb <= 1).float()
    sums = np.zeros((len(blocks), 4))
    saved = [(b.attn1, b.attn1.processor) for b in blocks]
    try:
        for i, block in enumerate(blocks):
            attn = block.attn1
            attn.set_processor(AttnProcessor())  # the classic processor asks the layer for its probabilities
            scores = attn.get_attention_scores

            def recorded(query, key, mask=None, _scores=scores, _i=i):
                p = _scores(query, key, mask)
                sums[_i] += [float((p * own).sum(-1).mean()), float((p * near).sum(-1).mean()),
                             float(-(p.clamp_min(1e-12).log() * p).sum(-1).mean()), 1]
                return p

            attn.get_attention_scores = recorded
        pipeline.sample(model, captions, sampling, seeds=seeds)
    finally:
        for attn, processor in saved:
            del attn.get_attention_scores
            attn.set_processor(processor)
    return [{"own": s[0] / s[3], "neighbourhood": s[1] / s[3], "entropy": s[2] / s[3]} for s in sums]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--captions", type=int, default=12)
    p.add_argument("--samples", type=int, default=tw.TOY_SAMPLES_PER_PROMPT)
    p.add_argument("--steps", type=int, default=tw.TOY_SAMPLING["num_steps"])
    p.add_argument("--seed", type=int, default=1, help="the caption draw of bench/fusion_quality.py --seed")
    p.add_argument("--mask-level", type=float, default=tw.TOY_FUSION["mask_level"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--locality", action="store_true", help="read self-attention locality while sampling instead")
    p.add_argument("--out", type=Path, default=None, help="write the summary and records here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model)
    sampling = SamplingConfig(num_steps=args.steps, guidance_scale=5.0, eta=1.0, batch_size=args.samples)
    fusion = FusionConfig(**{**tw.TOY_FUSION, "mask_level": args.mask_level})
    drawn = draw(args.seed, args.captions, args.samples)  # bench/fusion_quality.py's captions and seeds
    if args.locality:
        (first, seeds), (second, _) = next(drawn), next(drawn)
        cells = model.unet.config.sample_size ** 2 // model.unet.config.patch_size ** 2
        rows = attention_locality(model, [first, second] * 2, seeds[:4], sampling.model_copy(update={"batch_size": 4}))
        print(f"uniform: own {1 / cells:.3f}, 3x3 at most {9 / cells:.3f}, entropy {np.log(cells):.2f} nats")
        for i, r in enumerate(rows):
            print(f"block {i}: own cell {r['own']:.3f}, 3x3 neighbourhood {r['neighbourhood']:.3f}, "
                  f"entropy {r['entropy']:.2f} nats")
        return {"locality": rows}
    records: list[dict[str, Any]] = []
    for caption, seeds in drawn:
        records += pair_records(model, caption, seeds, sampling, fusion)
    summary = summarise(records)
    for prop, c in summary["carry"].items():
        print(f"{prop}: carry {c['carry']:.2f} over {c['objects']} objects; more than half the way in "
              f"{c['past_half']:.2f} of the {c['far']} that differ by over {MIN_MOVE[prop]:g}")
    for part, d in summary["distance"].items():
        print(f"{part} ({d['share_of_pixels']:.2f} of pixels): target-base {d['target_base']:.4f} vs "
              f"reference-base {d['reference_base']:.4f} (ratio {d['ratio']:.2f})")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "records": records, "config": vars(args)}, default=str))
    return summary


if __name__ == "__main__":
    main()
