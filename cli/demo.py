"""dfusion demo: a whole embedded job in a few minutes on 2 CPU cores.

Default: the shipped toy-world model (coloured, patterned squares, `dfusion_core/toy/`) on four toy captions,
with the toy preset (`dfusion_core/presets.py`: its exact scorer, fusion and training settings, the
held-out captions and the before/after evaluation on the job's own captions). It ends with a short
summary in words (`summary_lines`: what fusion gained, the score on the job's captions with fresh
noise, untrained against trained, with the paired 95 % CI of the difference, the held-out score on
the same noise, and where the report is), then the final JSON line that `dfusion run` prints too.
`--model tiny` runs the random tiny model on two of the paper's prompts instead (machinery only:
its images are noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.run import DEMO_PROMPTS, add_job_arguments, build_spec, execute, finish
from dfusion_core.presets import MODEL_PRESETS, TOY_JOB

TOY_PROMPTS = [
    "a red striped square above a blue dotted square",
    "a yellow checked square left of a green striped square",
    "a red dotted square left of a blue checked square",
    "a yellow checked square above a green dotted square",
]
TINY_EPOCHS = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.set_defaults(out=Path("demo-run"), model="toy")
    p.epilog = ("The demo's own defaults: --model toy (the shipped toy-world model, on four toy captions with the "
                f"toy preset's settings: {TOY_JOB['samples_per_prompt']} samples a caption, "
                f"{MODEL_PRESETS['toy']['sampling']['num_steps']} DDIM steps, {TOY_JOB['epochs']} epoch(s), its "
                "scorer, fusion and training), --out demo-run. --model tiny runs the random tiny model on two of the paper's prompts "
                f"for {TINY_EPOCHS} epochs (machinery only).")


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
        if args.epochs is None:  # the second epoch samples with the first one's policy: the whole loop
            fields["epochs"] = TINY_EPOCHS
    spec, models = build_spec(prompts, args, fields)
    summary = execute(spec, models, args)
    print("\n".join(summary_lines(summary, args.out)), file=sys.stderr)
    return finish(summary)


def summary_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """The run in words, for a person: what fusion gained, what training changed (with the CI),
    where to look."""
    metrics = summary["metrics"]
    if summary["status"] != "succeeded" or not metrics:
        return [f"dfusion demo: {summary['status']}: {summary.get('error') or 'no epoch finished'}"]
    last, lines = metrics[-1], [f"dfusion demo: {len(metrics)} epoch(s) trained"]
    pairs = sum(m.get("pairs_total") or 0 for m in metrics)
    gains = [m["mean_target_gain"] for m in metrics if m.get("mean_target_gain") is not None]
    if gains:
        lines.append(f"  fusion: {pairs} pairs; fused targets scored {sum(gains) / len(gains):+.4f} above their bases "
                     "on average")
    trained = [m for m in metrics if m.get("optimizer_steps")]
    if trained:  # the budget the preset spent, in passes over the pairs kept (its max_passes cap)
        kept = sum(m["pairs_trained"] for m in trained)
        visits = sum(m["pair_passes"] * m["pairs_trained"] for m in trained)
        accuracy = [m["reward_accuracy"] for m in trained if m.get("reward_accuracy") is not None]
        lines.append(f"  training: {kept} of {pairs} pairs kept, {sum(m['optimizer_steps'] for m in trained)} optimizer "
                     f"steps, {visits / kept:.1f} passes over them"
                     + (f", reward accuracy {sum(accuracy) / len(accuracy):.2f}" if accuracy else ""))
    base, after, lo, hi = (last.get(k) for k in ("eval_score_base", "eval_score", "eval_diff_ci_low",
                                                  "eval_diff_ci_high"))
    if base is not None and after is not None:
        ci = f", 95 % CI {lo:+.4f} to {hi:+.4f}" if lo is not None and hi is not None else ""
        lines.append(f"  own captions, fresh noise: {base:.4f} untrained -> {after:.4f} trained ({after - base:+.4f}{ci}, "
                     f"{last.get('eval_samples')} paired samples): {_verdict(lo, hi)}")
    held_base, held = last.get("heldout_score_base"), last.get("heldout_score")
    if held_base is not None and held is not None:
        lines.append(f"  held-out captions, same noise: {held_base:.4f} untrained -> {held:.4f} trained "
                     f"({held - held_base:+.4f})")
    lines.append(f"  report: {out / 'report.html'} (pairs, charts); LoRA: {out / 'checkpoints'}/"
                 f"{last.get('policy_version')}")
    return lines


def _verdict(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "no CI measured"
    if lo > 0:
        return "improved"
    return "got worse" if hi < 0 else "no clear change (the CI includes 0)"
