"""dfusion demo: a whole embedded job in a few minutes on 2 CPU cores.

Default: the shipped toy-world model (coloured shapes, `dfusion_core/toy/`) with its exact
scorer and its fusion and training presets, on four toy captions; it ends by printing the held-out
score of the untrained and the trained model on the same noise. `--model tiny` runs the random tiny
model on two of the paper's prompts instead (machinery only: its images are noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.run import DEMO_PROMPTS, add_job_arguments, build_spec, execute

TOY_PROMPTS = [
    "a red circle above a blue square",
    "a yellow triangle left of a green circle",
    "a blue square right of a red triangle",
    "a green triangle below a yellow square",
]
TOY_HELDOUT = 46  # every held-out caption, scored before and after training, one seed each, same noise


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.set_defaults(out=Path("demo-run"), epochs=2, model="toy")


def run(args: argparse.Namespace) -> int:
    if args.model == "toy":
        from dfusion_core.toy import world as toyworld

        # absolute thresholds are unused: the toy preset cuts each item's map relative to itself
        prompts = [{"text": t, "items": toyworld.parse_caption(t).items, "mask_thresholds": [0.5, 0.5]}
                   for t in TOY_PROMPTS]
        spec, models = build_spec(prompts, args)
        update = {"scorer": "toy", "eval_prompts": toyworld.heldout_captions()[:TOY_HELDOUT], "eval_seeds": 1,
                  "fusion": spec.fusion.model_copy(update=toyworld.TOY_FUSION),
                  "training": spec.training.model_copy(update=toyworld.TOY_TRAINING)}
    else:
        from dfusion_core.evaluation import load_prompts

        prompts = [{"text": r.text, "items": list(r.items), "mask_thresholds": list(r.mask_thresholds)}
                   for r in load_prompts() if r.text in DEMO_PROMPTS]
        spec, models = build_spec(prompts, args)
        # a held-out check per policy version that fits the demo's few-minute budget on 2 cores
        update = {"eval_prompts": [r.text for r in load_prompts(split="test")][:2], "eval_seeds": 1}
    code = execute(spec.model_copy(update=update), models, args)
    metrics = json.loads((args.out / "metrics.json").read_text())["epochs"] if code == 0 else []
    if metrics:
        before, after = metrics[-1].get("heldout_score_base"), metrics[-1].get("heldout_score")
        print(f"held-out score (same prompts and noise): {before:.4f} untrained, {after:.4f} after "
              f"{len(metrics)} epoch(s) ({after - before:+.4f})", file=sys.stderr)
    print(f"open {args.out / 'report.html'} to see the pairs", file=sys.stderr)
    return code
