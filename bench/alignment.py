"""CPU: the paper's claim in the toy world. With equal sample and step budgets, compare
no training, trajectory DPO on plain pairs and DPO on D-Fusion pairs, on held-out captions,
over several seeds; the exact `toy` scorer measures alignment.

    .venv/bin/python bench/alignment.py [--seeds 0 1 2] [--prompts 8] [--samples 8] [--epochs 2] \
        [--steps 10] [--eval-prompts 46] [--eval-seeds 2] [--lr 5e-3] [--threshold 0.02] [--mask-resolution 8] [--out bench/results/alignment]

Each (seed, arm) is one embedded job (workers/embedded.py) on the shipped `toy` model: the same
training captions (a seeded draw from the training split), the same sample seeds, the same number
of pairs (n/2 per prompt) and optimizer steps per epoch; only `training.pairs` differs. The
"none" arm is the job's own `heldout_score_base` (the policy with adapters off, same eval seeds),
so all three arms are scored on the same held-out captions and noise. Writes summary.json and
alignment.svg (mean +- std over seeds per arm) under --out; the last stdout line is the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dfusion_core import toyworld as tw  # noqa: E402
from services.jobspec import JobSpec  # noqa: E402
from workers.embedded import run_embedded  # noqa: E402

ARMS = ("none", "plain", "fusion")


def job_spec(seed: int, pairs: str, args: argparse.Namespace) -> JobSpec:
    rng = np.random.default_rng([1234, seed])
    train = tw.train_captions()
    chosen = [train[i] for i in rng.choice(len(train), size=args.prompts, replace=False)]
    heldout = tw.heldout_captions()[: args.eval_prompts]
    return JobSpec.model_validate({
        "prompts": [{"text": c, "items": tw.parse_caption(c).items, "mask_thresholds": [args.threshold] * 2}
                    for c in chosen],
        "model": "toy",
        "scorer": "toy",
        "samples_per_prompt": args.samples,
        "epochs": args.epochs,
        "seed": seed,
        "sampling": {"num_steps": args.steps, "guidance_scale": args.guidance, "eta": 1.0,
                     "batch_size": args.batch},
        "training": {"pairs": pairs, "algorithm": "trajectory_dpo", "learning_rate": args.lr,
                     "batch_pairs": 2, "timestep_fraction": args.timestep_fraction},
        "fusion": {"mask_resolution": args.mask_resolution},
        "eval_prompts": heldout,
        "eval_seeds": args.eval_seeds,
    })


def run(args: argparse.Namespace) -> dict[str, Any]:
    per_seed: dict[str, list[float]] = {arm: [] for arm in ARMS}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            base = None
            for pairs in ("plain", "fusion"):
                t0 = time.time()
                result = run_embedded(job_spec(seed, pairs, args), Path(tmp) / f"{seed}-{pairs}", models={"toy": "toy"})
                if result.status != "succeeded":
                    raise RuntimeError(f"seed {seed} {pairs}: job {result.status}: {result.error}")
                last = result.metrics[-1]
                per_seed[pairs].append(float(last["heldout_score"]))
                base = float(result.metrics[0]["heldout_score_base"]) if base is None else base
                runs.append({"seed": seed, "arm": pairs, "heldout_by_epoch": [m["heldout_score"] for m in result.metrics],
                             "heldout_base": result.metrics[0]["heldout_score_base"],
                             "loss": [m["loss"] for m in result.metrics], "margin": [m["margin"] for m in result.metrics],
                             "optimizer_steps": sum(m["optimizer_steps"] for m in result.metrics),
                             "wall_s": round(time.time() - t0, 1)})
                print(json.dumps(runs[-1]), flush=True)
            per_seed["none"].append(float(base))
    summary = {
        "arms": {arm: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                       "per_seed": v} for arm, v in per_seed.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
    }
    return summary


def svg_plot(summary: dict[str, Any], title: str) -> str:
    """A bar chart (mean) with error bars (std) and the per-seed points, as standalone SVG."""
    w, h, pad, top = 420, 300, 50, 40
    arms = list(summary["arms"])
    values = [summary["arms"][a] for a in arms]
    hi = max(1e-9, max(v["mean"] + v["std"] for v in values), *(x for v in values for x in v["per_seed"]))
    ymax = min(1.0, math.ceil(hi * 10 + 0.5) / 10)
    y = lambda v: top + (h - top - pad) * (1 - v / ymax)  # noqa: E731
    bw = (w - 2 * pad) / len(arms)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="20" text-anchor="middle">{title}</text>',
           f'<line x1="{pad}" y1="{y(0)}" x2="{w - pad / 2}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{pad}" y1="{top}" x2="{pad}" y2="{y(0)}" stroke="black"/>']
    for k in range(6):
        v = ymax * k / 5
        out.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>')
    colours = {"none": "#999999", "plain": "#4a7bd0", "fusion": "#d0554a"}
    for i, (arm, v) in enumerate(zip(arms, values, strict=True)):
        cx = pad + bw * (i + 0.5)
        out.append(f'<rect x="{cx - bw * 0.3}" y="{y(v["mean"])}" width="{bw * 0.6}" height="{y(0) - y(v["mean"])}" '
                   f'fill="{colours.get(arm, "#777")}"/>')
        lo, up = y(max(0.0, v["mean"] - v["std"])), y(v["mean"] + v["std"])
        out.append(f'<line x1="{cx}" y1="{lo}" x2="{cx}" y2="{up}" stroke="black" stroke-width="2"/>')
        for x in v["per_seed"]:
            out.append(f'<circle cx="{cx + bw * 0.15}" cy="{y(x)}" r="3" fill="black"/>')
        out.append(f'<text x="{cx}" y="{y(0) + 16}" text-anchor="middle">{arm}</text>')
        out.append(f'<text x="{cx}" y="{y(0) + 30}" text-anchor="middle">{v["mean"]:.3f} ± {v["std"]:.3f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--prompts", type=int, default=8, help="training captions per job")
    p.add_argument("--samples", type=int, default=8, help="samples per caption per epoch (multiple of 4)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="DDIM steps for sampling, fusion, training and eval")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=16, help="samples per UNet call")
    p.add_argument("--lr", type=float, default=5e-3, help="LoRA learning rate (the repo default 1e-4 barely moves 32 steps)")
    p.add_argument("--timestep-fraction", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.02,
                   help="item mask threshold (cross-attention probability; the toy model spreads ~0.01-0.03 per item)")
    p.add_argument("--mask-resolution", type=int, default=8,
                   help="side of the averaged cross-attention maps (the default latent/4 = 4 misses the objects)")
    p.add_argument("--eval-prompts", type=int, default=46, help="held-out captions scored (46 = all)")
    p.add_argument("--eval-seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alignment")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"toy world, held-out captions: {len(args.seeds)} seeds, mean ± std"
    (args.out / "alignment.svg").write_text(svg_plot(summary, title))
    print(json.dumps({a: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for a, v in summary["arms"].items()}))
    return summary


if __name__ == "__main__":
    main()
