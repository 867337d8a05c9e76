"""dfusion demo: the embedded tiny job on two of the paper's prompts (a few minutes on 2 CPU cores)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.run import DEMO_PROMPTS, add_job_arguments, build_spec, execute


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.set_defaults(out=Path("demo-run"), epochs=2)


def run(args: argparse.Namespace) -> int:
    from dfusion_core.evaluation import load_prompts

    prompts = [{"text": r.text, "items": list(r.items), "mask_thresholds": list(r.mask_thresholds)}
               for r in load_prompts() if r.text in DEMO_PROMPTS]
    spec, models = build_spec(prompts, args)
    # a held-out check per policy version that fits the demo's few-minute budget on 2 cores
    held_out = [r.text for r in load_prompts(split="test")][:2]
    spec = spec.model_copy(update={"eval_prompts": held_out, "eval_seeds": 1})
    code = execute(spec, models, args)
    print(f"open {args.out / 'report.html'} to see the pairs")
    return code
