"""dfusion demo: a whole embedded job in a few minutes on 2 CPU cores.

Default: the shipped toy-world model (coloured shapes, `dfusion_core/toy/`) on four toy captions,
with the toy preset (`dfusion_core/presets.py`: its exact scorer, fusion and training settings, the
held-out captions and the before/after evaluation on the job's own captions). It ends by printing
the held-out score of the untrained and the trained model on the same noise, then the score on the
job's captions with fresh noise, untrained against trained, with the paired 95 % CI of the
difference. `--model tiny` runs the random tiny model on two of the paper's prompts instead
(machinery only: its images are noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.run import DEMO_PROMPTS, add_job_arguments, build_spec, epoch_metrics, eval_words, execute

TOY_PROMPTS = [
    "a red circle above a blue square",
    "a yellow triangle left of a green circle",
    "a blue square right of a red triangle",
    "a green triangle below a yellow square",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.set_defaults(out=Path("demo-run"), epochs=2, model="toy")


def run(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    if args.model == "toy":
        from dfusion_core.toy import world as toyworld

        # the thresholds are unused: the toy preset cuts each item's map relative to itself
        prompts = [{"text": t, "items": toyworld.parse_caption(t).items, "mask_thresholds": [0.5, 0.5]}
                   for t in TOY_PROMPTS]
    else:
        from dfusion_core.evaluation import load_prompts

        prompts = [{"text": r.text, "items": list(r.items), "mask_thresholds": list(r.mask_thresholds)}
                   for r in load_prompts() if r.text in DEMO_PROMPTS]
        # a held-out check per policy version that fits the demo's few-minute budget on 2 cores
        fields = {"eval_prompts": [r.text for r in load_prompts(split="test")][:2], "eval_seeds": 1}
    spec, models = build_spec(prompts, args, fields)
    code = execute(spec, models, args)
    metrics = epoch_metrics(args.out) if code == 0 else []
    before, after = (metrics[-1].get("heldout_score_base"), metrics[-1].get("heldout_score")) if metrics else (None, None)
    if before is not None and after is not None:
        print(f"held-out score (same prompts and noise): {before:.4f} untrained, {after:.4f} after "
              f"{len(metrics)} epoch(s) ({after - before:+.4f})", file=sys.stderr)
    print(f"open {args.out / 'report.html'} to see the pairs", file=sys.stderr)
    words = eval_words(metrics)
    if words:
        print(words, file=sys.stderr)
    return code
