"""dfusion demo: a whole embedded job in a few minutes on 2 CPU cores.

Default: the shipped toy-world model (coloured shapes, `dfusion_core/toyworld.py`) with its exact
scorer, on two toy captions, evaluated on held-out captions. `--model tiny` runs the random tiny
model on two of the paper's prompts instead (machinery only: its images are noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.run import DEMO_PROMPTS, add_job_arguments, build_spec, execute

TOY_PROMPTS = ["a red circle above a blue square", "a yellow triangle left of a green circle"]
TOY_THRESHOLD = 0.02  # masks land on the named shapes at 8x8 (see bench/RESULTS.md, toy world)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.set_defaults(out=Path("demo-run"), epochs=2, model="toy")


def run(args: argparse.Namespace) -> int:
    if args.model == "toy":
        from dfusion_core import toyworld

        prompts = [{"text": t, "items": [c.shape_a, c.shape_b], "mask_thresholds": [TOY_THRESHOLD] * 2}
                   for t, c in ((t, toyworld.parse_caption(t)) for t in TOY_PROMPTS)]
        spec, models = build_spec(prompts, args)
        update = {"scorer": "toy", "eval_prompts": toyworld.heldout_captions()[:4], "eval_seeds": 1,
                  "fusion": spec.fusion.model_copy(update={"mask_resolution": 8})}
    else:
        from dfusion_core.evaluation import load_prompts

        prompts = [{"text": r.text, "items": list(r.items), "mask_thresholds": list(r.mask_thresholds)}
                   for r in load_prompts() if r.text in DEMO_PROMPTS]
        spec, models = build_spec(prompts, args)
        # a held-out check per policy version that fits the demo's few-minute budget on 2 cores
        update = {"eval_prompts": [r.text for r in load_prompts(split="test")][:2], "eval_seeds": 1}
    code = execute(spec.model_copy(update=update), models, args)
    print(f"open {args.out / 'report.html'} to see the pairs")
    return code
