"""dfusion run PROMPTS.jsonl / dfusion demo: a whole job in this process (no Redis, local files)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cli.jobargs import add_job_flags, add_tracking_flag, job_body, read_prompts
from dfusion_core.errors import ConfigError
from dfusion_core.hub import is_hub_id
from dfusion_core.registry import MODELS

if TYPE_CHECKING:
    from services.jobspec import JobSpec

DEMO_PROMPTS = ["a cat eating a sandwich", "a red and woolen dog"]
#: The train-caption evaluation of the last epoch (workers/publish.py), copied to the top of the summary line.
EVAL_FIELDS = ("eval_score_base", "eval_score", "eval_diff_ci_low", "eval_diff_ci_high", "eval_samples")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", type=Path, help="JSONL: one {text, items, mask_thresholds} per line")
    add_job_arguments(p)
    add_tracking_flag(p)


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    add_job_flags(p, model_help="'tiny' (random), 'tiny-sdxl' (random, SDXL layout), 'toy' (the shipped toy-world "
                             "model), a local diffusers folder or a Hugging Face Hub id ('owner/name', through the "
                             "HF cache) of an SD 1.x / 2.x or SDXL pipeline",
                  steps_help="DDIM steps (default: the model's preset, else 20)")
    p.add_argument("--device", default=None, help="cuda:N or cpu (default: the GPU if any)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder (default: runs/latest)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress: neither bars on a terminal nor progress lines in a log")


def build_spec(prompts: list[dict], args: argparse.Namespace,
               fields: dict[str, Any] | None = None) -> tuple[JobSpec, dict[str, str]]:
    """The job spec (the flags' body with `fields` over it, under the model's preset), and the
    local folders it names: a folder `--model` is registered as 'local'. A Hub id ('owner/name')
    stays as it is; with HF_HUB_OFFLINE set it must be in the HF cache."""
    from services.jobspec import JobSpec
    from services.modelcheck import check_models
    from services.settings import get_settings

    models: dict[str, str] = {}
    model = args.model
    if model not in MODELS and Path(model).is_dir():
        models, model = {"local": str(Path(model).resolve())}, "local"
    elif model not in MODELS and not is_hub_id(model):
        raise ConfigError("model", f"{model} is neither one of {', '.join(MODELS)}, a local diffusers folder "
                                   "nor a Hugging Face Hub id ('owner/name')")
    try:
        spec = JobSpec.model_validate({**job_body(prompts, args, model=model), **(fields or {})})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(".".join(map(str, err["loc"])) or "job", err["msg"]) from None
    check_models(spec, get_settings().model_copy(update={"models": models}))
    return spec, models


def execute(spec, models: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Run the job in this process, with a progress bar per stage (plain lines when stderr is not a
    terminal); the summary that `finish` prints as the final JSON line."""
    from cli.progress import stage_progress
    from workers.embedded import run_embedded

    with stage_progress(enabled=not args.no_progress) as progress:
        result = run_embedded(spec, args.out, models=models, device=args.device, progress=progress)
    summary = {"status": result.status, "out": str(result.out), "counts": result.counts,
               "metrics": result.metrics, "error": result.error}
    last = result.metrics[-1] if result.metrics else {}
    summary.update({k: last[k] for k in EVAL_FIELDS if k in last})
    return summary


def finish(summary: dict[str, Any]) -> int:
    """Print the summary as the final JSON line (after any words on stderr); the exit code."""
    sys.stderr.flush()
    print(json.dumps(summary), flush=True)
    return 0 if summary["status"] == "succeeded" else 1


def epoch_metrics(out: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics a run left in `out` (metrics.json)."""
    path = out / "metrics.json"
    return list(json.loads(path.read_text()).get("epochs") or []) if path.is_file() else []


def eval_words(epochs: list[dict[str, Any]]) -> str | None:
    """The last epoch's train-caption evaluation in words; None when the job ran none."""
    m = epochs[-1] if epochs else {}
    if m.get("eval_score") is None or m.get("eval_score_base") is None:
        return None
    diff = m["eval_score"] - m["eval_score_base"]
    ci = (f", 95% CI {m['eval_diff_ci_low']:+.4f} to {m['eval_diff_ci_high']:+.4f}"
          if m.get("eval_diff_ci_low") is not None and m.get("eval_diff_ci_high") is not None else "")
    return (f"training prompts, fresh noise: {m['eval_score_base']:.4f} untrained -> {m['eval_score']:.4f} after "
            f"{len(epochs)} epoch(s) ({diff:+.4f}{ci}) over {m.get('eval_samples')} paired samples")


def run(args: argparse.Namespace) -> int:
    spec, models = build_spec(read_prompts(args.prompts), args)
    summary = execute(spec, models, args)
    words = eval_words(epoch_metrics(args.out)) if summary["status"] == "succeeded" else None
    if words:
        print(words, file=sys.stderr)
    return finish(summary)
