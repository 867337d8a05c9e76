"""What `dfusion run` (and `demo`) and `dfusion submit` share: the prompts file, the job flags,
and the job body built from them (the JobSpec fields the flags set; the rest keep its defaults).

Torch-free: `dfusion submit` imports it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dfusion_core.errors import ConfigError


def read_prompts(path: Path) -> list[dict]:
    """The prompts of a JSONL file: one {text, items, mask_thresholds} object per line."""
    if not path.is_file():
        raise ConfigError("prompts", f"{path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError("prompts", f"{path}:{n}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict) or "text" not in row:
            raise ConfigError("prompts", f"{path}:{n}: needs an object with 'text'")
        out.append({k: row[k] for k in ("text", "items", "mask_thresholds") if k in row})
    if not out:
        raise ConfigError("prompts", f"{path} has no prompts")
    return out


def add_job_flags(p: argparse.ArgumentParser, *, model_help: str, steps_help: str) -> None:
    """--model, --revision, --variant, --samples-per-prompt, --epochs, --steps, --pairs, --algorithm, --seed,
    --train-eval-seeds. A flag left out leaves its field out of the body (the model's preset, else the default)."""
    p.add_argument("--model", default="tiny", help=model_help)
    p.add_argument("--revision", default=None, help="Hub ids: branch, tag or commit (default: main)")
    p.add_argument("--variant", default=None, help="weights variant of the model's files, e.g. fp16")
    p.add_argument("--samples-per-prompt", type=int, default=None,
                   help="multiple of 4 (default: the model's preset, else 8)")
    p.add_argument("--epochs", type=int, default=None,
                   help="sample -> fuse -> train rounds (default: the model's preset, else 1)")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument("--pairs", choices=["fusion", "plain"], default=None,
                   help="pair construction (ablation; default: fusion)")
    p.add_argument("--algorithm", default=None, help="trajectory_dpo | diffusion_dpo | ddpo | dpok")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-eval-seeds", type=int, default=None, metavar="N",
                   help="score the job's own prompts with N fresh seeds each, trained against untrained on the "
                        "same noise, every epoch (a paired 95%% CI); 0 = off (default: the model's preset, else 0)")


def add_tracking_flag(p: argparse.ArgumentParser) -> None:
    """--report-to (`dfusion run`: the embedded runner keeps the tracker's local files in its run folder)."""
    p.add_argument("--report-to", default="none", metavar="{none,tensorboard,wandb,mlflow}",
                   help="experiment tracking of the step and epoch curves and a few pairs: 'tensorboard' "
                        "(<out>/tensorboard/, extra 'tracking'), 'wandb' (WANDB_MODE, WANDB_PROJECT; files in "
                        "WANDB_DIR or <out>/wandb/, extra 'wandb'), 'mlflow' (MLFLOW_TRACKING_URI, default "
                        "<out>/mlflow.db, extra 'mlflow'); default: none")


def job_body(prompts: list[dict], args: argparse.Namespace, *, model: str | None = None) -> dict[str, Any]:
    """The job body the flags of `add_job_flags` describe; `model` overrides `--model`."""
    body: dict[str, Any] = {"prompts": prompts, "model": model or args.model, "seed": args.seed}
    if args.samples_per_prompt is not None:
        body["samples_per_prompt"] = args.samples_per_prompt
    if args.epochs is not None:
        body["epochs"] = args.epochs
    for name in ("revision", "variant"):
        if getattr(args, name, None):
            body[name] = getattr(args, name)
    if getattr(args, "train_eval_seeds", None) is not None:
        body["train_eval_seeds"] = args.train_eval_seeds
    training = {k: v for k, v in (("pairs", args.pairs), ("algorithm", args.algorithm)) if v}
    if training:
        body["training"] = training
    if getattr(args, "report_to", "none") != "none":
        body["report_to"] = args.report_to
    if args.steps:
        body["sampling"] = {"num_steps": args.steps}
    return body
