"""Does fusion make a better image? D-Fusion pairs on the toy model, no training.

    .venv/bin/python bench/fusion_quality.py [--captions 48] [--samples 32] [--steps 10] \
        [--mask-mode minmax] [--mask-level 0.5] [--mask-resolution 16] [--out bench/results/fusion_quality]

For each of --captions training captions (a seeded draw from the toy world's training split):
sample --samples images, score them with the exact `toy` scorer, select D-Fusion pairs as the
service does (top n/4 references twice, bottom n/2 bases), fuse, and score every target on its
own image. Reports, over all pairs:

- P(target > base) and the mean score gain target - base, with a 95 % CI over captions (pairs of
  one caption share references, so the caption is the independent unit);
- the mean absolute pixel distance target-base against reference-base (fusion should change the
  base where the items are, not replace it with the reference);
- the IoU of the reference's union item mask, per denoising step, with the true union of the
  caption's two objects in the reference image (`toy.scorer.object_masks`);
- fact by fact (A's colour and pattern, B's colour and pattern, the relation): how often the target
  gains a fact its reference has and its base lacks (`fixed`), and how often it loses one its base
  had (`broken`): which facts fusion carries over, and at what cost; and the patterns fixed by the
  pattern word the caption asks for.

Gate for the toy world: gain >= +0.10 with its 95 % CI above zero, P(target > base) >= 0.5, and
distance ratio <= 0.5 (the target stays nearer its base than the reference is). Writes summary.json under --out;
the last stdout line is the summary, and one line reads exactly
`fusion target gain: +0.12 (95% CI +0.09 to +0.15), P(target>base) 0.64`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.stats import mean_ci  # noqa: E402
from bench.toy_facts import FACTS  # noqa: E402
from dfusion_core import pipeline  # noqa: E402
from dfusion_core.config import FusionConfig, SamplingConfig  # noqa: E402
from dfusion_core.items import map_items  # noqa: E402
from dfusion_core.pairs import select_fusion_pairs  # noqa: E402
from dfusion_core.registry import load_model  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import scorer as toy_scorer  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

GAIN_GATE, WIN_GATE, DISTANCE_GATE = 0.10, 0.5, 0.5


def fusion_config(args: argparse.Namespace) -> FusionConfig:
    return FusionConfig(mask_mode=args.mask_mode, mask_level=args.mask_level, mask_resolution=args.mask_resolution,
                        skip_first_steps=args.skip_first, skip_last_steps=args.skip_last,
                        blocks=tuple(args.blocks) if args.blocks else None)


def draw(seed: int, captions: int, samples: int) -> Iterator[tuple[str, list[int]]]:
    """The bench's captions (training captions, without repeats) and each one's sample seeds, for `seed`."""
    rng = np.random.default_rng([4321, seed])
    train = tw.train_captions()
    for i in rng.choice(len(train), size=captions, replace=False):
        yield train[i], [int(x) for x in rng.integers(0, 2**31 - 1, size=samples)]


def fuse_caption(model, caption: str, seeds: list[int], sampling: SamplingConfig, fusion: FusionConfig,
                 threshold: float = 0.02) -> tuple[torch.Tensor, list[float], list[Any], list[Any]]:
    """Sample one caption, score, pair (the authors' selection) and fuse: the samples' images
    [n, H, W, 3], their scores, the pair plans and the fused pairs."""
    trajs = pipeline.sample(model, [caption] * len(seeds), sampling, seeds=seeds)
    images = torch.stack([t.image for t in trajs])
    scores = toy_scorer.ToyScorer().score(images, [caption] * len(seeds)).tolist()
    plans = select_fusion_pairs(scores)
    items = map_items(model.tokenizer, caption, tw.parse_caption(caption).items, [threshold] * 2)
    fused = pipeline.fuse_pairs(model, [trajs[p.reference] for p in plans], [trajs[p.base] for p in plans],
                                [items] * len(plans), fusion)
    return images, scores, plans, fused


def caption_pairs(model, caption: str, seeds: list[int], sampling: SamplingConfig, fusion: FusionConfig,
                  threshold: float) -> list[dict[str, Any]]:
    """Sample, score, pair and fuse one caption: one row per pair."""
    images, scores, plans, fused = fuse_caption(model, caption, seeds, sampling, fusion, threshold)
    targets = torch.stack([f.target.image for f in fused])
    target_scores = toy_scorer.ToyScorer().score(targets, [caption] * len(plans)).tolist()
    read = [read_image(img, caption) for img in images.numpy()]
    rows = []
    for plan, f, ts in zip(plans, fused, target_scores, strict=True):
        target_facts, target_drawn = read_image(f.target.image.numpy(), caption)
        ref, base, tgt = (x.numpy().astype(np.float32) / 255 for x in
                          (images[plan.reference], images[plan.base], f.target.image))
        truth = toy_scorer.object_masks(images[plan.reference].numpy(), caption).any(0)
        rows.append({
            "caption": caption, "reference_score": scores[plan.reference], "base_score": scores[plan.base],
            "target_score": ts, "gain": ts - scores[plan.base],
            "reference_facts": read[plan.reference][0], "base_facts": read[plan.base][0], "target_facts": target_facts,
            "base_drawn": read[plan.base][1], "target_drawn": target_drawn,
            "dist_target_base": float(np.abs(tgt - base).mean()), "dist_reference_base": float(np.abs(ref - base).mean()),
            "mask_iou": [toy_scorer.mask_iou(m, f.mask_resolution, truth) for m in f.masks],
            "mask_cover": [float(m.amax(-1).mean()) for m in f.masks],
        })
    return rows


def fact_transfer(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fact: of the pairs whose reference has it and base lacks it, the share whose target has
    it (`fixed`); of the pairs whose base has it, the share whose target lacks it (`broken`)."""
    out = {}
    for k, name in enumerate(FACTS):
        fixable = [r["target_facts"][k] for r in rows if r["reference_facts"][k] and not r["base_facts"][k]]
        kept = [r["target_facts"][k] for r in rows if r["base_facts"][k]]
        out[name] = {"fixable": len(fixable), "fixed": statistics.fmean(fixable) if fixable else None,
                     "held": len(kept), "broken": 1 - statistics.fmean(kept) if kept else None}
    return out


def read_image(image: np.ndarray, caption: str) -> tuple[list[int], list[str]]:
    """The caption's five facts (0/1, `caption_facts`' order) and the patterns the scorer reads for
    objects A and B ('nothing' where that colour is absent), from one segmentation of the image."""
    c = tw.parse_caption(caption)
    regions = toy_scorer.segment(image)
    drawn = [regions[col].pattern if col in regions else "nothing" for col in (c.colour_a, c.colour_b)]
    return [int(x) for x in toy_scorer.region_facts(regions, c)], drawn


def pattern_transfer(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pattern word the caption asks for (either object): of the pairs whose reference drew it and
    base did not, how many, the share whose target drew it, and what the bases and targets drew."""
    fixable: dict[str, list[dict[str, Any]]] = {pattern: [] for pattern in tw.PATTERNS}
    for r in rows:
        c = tw.parse_caption(r["caption"])
        for obj, k, pattern in ((0, FACTS.index("pattern_a"), c.pattern_a), (1, FACTS.index("pattern_b"), c.pattern_b)):
            if r["reference_facts"][k] and not r["base_facts"][k]:
                fixable[pattern].append({"fixed": r["target_facts"][k], "base": r["base_drawn"][obj],
                                         "target": r["target_drawn"][obj]})
    return {pattern: {"fixable": len(v), "fixed": statistics.fmean(x["fixed"] for x in v) if v else None,
                      "bases_drew": dict(Counter(x["base"] for x in v)),
                      "targets_drew": dict(Counter(x["target"] for x in v))}
            for pattern, v in fixable.items()}


def by_reference(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """P(target > base) and P(target < base) apart for the pairs whose reference outscores its base
    (`better`) and those it only ties (`tied`). The authors' selection ties them when a caption's
    top n/4 and bottom n/2 score alike (a discrete score, a caption most samples draw right): there
    is nothing to carry over, so a tied pair can only stay or lose, and the tied share moves P."""
    out = {}
    for name, keep in (("better", lambda r: r["reference_score"] > r["base_score"]),
                       ("tied", lambda r: r["reference_score"] <= r["base_score"])):
        rs = [r for r in rows if keep(r)]
        out[name] = {"pairs": len(rs),
                     "p_target_beats_base": statistics.fmean(float(r["gain"] > 0) for r in rs) if rs else None,
                     "p_target_below_base": statistics.fmean(float(r["gain"] < 0) for r in rs) if rs else None}
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_caption: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_caption.setdefault(r["caption"], []).append(r)
    gain = mean_ci([statistics.fmean(r["gain"] for r in rs) for rs in by_caption.values()])
    d_tb = statistics.fmean(r["dist_target_base"] for r in rows)
    d_rb = statistics.fmean(r["dist_reference_base"] for r in rows)
    steps = len(rows[0]["mask_iou"])
    return {
        "pairs": len(rows), "captions": len(by_caption),
        "p_target_beats_base": statistics.fmean(float(r["gain"] > 0) for r in rows),
        "p_tie": statistics.fmean(float(r["gain"] == 0) for r in rows),
        "gain": gain,
        "mean_base_score": statistics.fmean(r["base_score"] for r in rows),
        "mean_target_score": statistics.fmean(r["target_score"] for r in rows),
        "mean_reference_score": statistics.fmean(r["reference_score"] for r in rows),
        "dist_target_base": d_tb, "dist_reference_base": d_rb, "distance_ratio": d_tb / max(d_rb, 1e-12),
        "mask_iou_per_step": [statistics.fmean(r["mask_iou"][s] for r in rows) for s in range(steps)],
        "mask_cover_per_step": [statistics.fmean(r["mask_cover"][s] for r in rows) for s in range(steps)],
        "by_reference": by_reference(rows),
        "facts": fact_transfer(rows),
        "patterns": pattern_transfer(rows),
    }


def gain_line(summary: dict[str, Any]) -> str:
    g = summary["gain"]
    return (f"fusion target gain: {g['mean']:+.2f} (95% CI {g['lo']:+.2f} to {g['hi']:+.2f}), "
            f"P(target>base) {summary['p_target_beats_base']:.2f}")


def load(name: str):
    """'toy', a folder of toy weights (scripts/train_toy.py --out), or anything `load_model` takes."""
    if (Path(name) / "unet.safetensors").is_file():
        return toy_model.load_toy(folder=name)
    return load_model(name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load(args.model)
    sampling = SamplingConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=1.0, batch_size=args.samples)
    fusion = fusion_config(args)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for c, (caption, seeds) in enumerate(draw(args.seed, args.captions, args.samples)):
        rows += caption_pairs(model, caption, seeds, sampling, fusion, args.threshold)
        if args.verbose:
            print(f"{c + 1}/{args.captions} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    summary = summarise(rows)
    summary["gate"] = {"gain_at_least": GAIN_GATE, "gain_ci_above": 0.0, "p_target_beats_base_at_least": WIN_GATE,
                       "distance_ratio_at_most": DISTANCE_GATE,
                       "passed": summary["gain"]["mean"] >= GAIN_GATE and summary["gain"]["lo"] > 0
                       and summary["p_target_beats_base"] >= WIN_GATE and summary["distance_ratio"] <= DISTANCE_GATE}
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary["fusion"] = fusion.model_dump(mode="json")
    summary["wall_s"] = round(time.time() - t0, 1)
    return {"summary": summary, "rows": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--captions", type=int, default=48)
    # the toy job's own count: which samples become references and bases depends on it
    p.add_argument("--samples", type=int, default=tw.TOY_SAMPLES_PER_PROMPT,
                   help="samples per caption (multiple of 4; default: a toy job's)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--mask-mode", default=tw.TOY_FUSION["mask_mode"], choices=["absolute", "minmax", "quantile"])
    p.add_argument("--mask-level", type=float, default=tw.TOY_FUSION["mask_level"])
    p.add_argument("--mask-resolution", type=int, default=tw.TOY_FUSION["mask_resolution"])
    p.add_argument("--threshold", type=float, default=0.02, help="item threshold for --mask-mode absolute")
    p.add_argument("--skip-first", type=int, default=tw.TOY_FUSION["skip_first_steps"])
    p.add_argument("--skip-last", type=int, default=0)
    p.add_argument("--blocks", type=int, nargs=2, default=tw.TOY_FUSION.get("blocks"),
                   help="fused attention blocks lo hi (the toy preset's by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fusion_quality")
    return p.parse_args(argv)


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _counts(counts: dict[str, int]) -> str:
    """{'nothing': 1, 'circle': 3} -> 'circle 3, nothing 1', most first."""
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    summary = result["summary"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "pairs.json").write_text(json.dumps(result["rows"]))
    print(gain_line(summary))
    print(f"pixel distance target-base {summary['dist_target_base']:.4f} vs reference-base "
          f"{summary['dist_reference_base']:.4f} (ratio {summary['distance_ratio']:.2f})")
    better, tied = summary["by_reference"]["better"], summary["by_reference"]["tied"]
    print(f"reference outscores its base in {better['pairs']} of {summary['pairs']} pairs: P(target>base) "
          f"{_share(better['p_target_beats_base'])}, P(target<base) {_share(better['p_target_below_base'])}; "
          f"in the {tied['pairs']} it ties: P(target<base) {_share(tied['p_target_below_base'])}")
    print("mask IoU per step: " + " ".join(f"{x:.2f}" for x in summary["mask_iou_per_step"]))
    for name, t in summary["facts"].items():
        print(f"{name}: fixed {_share(t['fixed'])} of {t['fixable']} (reference has it, base lacks it); "
              f"broken {_share(t['broken'])} of {t['held']} (base has it)")
    print("patterns fixed, by the word asked for: " + ", ".join(
        f"{pattern} {_share(t['fixed'])} of {t['fixable']}"
        for pattern, t in summary["patterns"].items()))
    for pattern, t in summary["patterns"].items():
        if t["fixable"]:
            print(f"  {pattern} asked for and missed: the bases drew {_counts(t['bases_drew'])}; "
                  f"their targets {_counts(t['targets_drew'])}")
    print(json.dumps({k: summary[k] for k in ("pairs", "p_target_beats_base", "gain", "distance_ratio", "gate")}))
    return summary


if __name__ == "__main__":
    main()
