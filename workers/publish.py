"""What training an epoch publishes: LoRA version e+1 with its checkpoint record, its held-out
score, with `train_eval_seeds` its before/after score on the job's own prompts, and the epoch's
metrics (one dict per epoch, `JobStore.append_metrics`).

Every write is an overwrite under a key derived from (job, epoch), so the train stage may run
this again on a redelivery.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from services.jobspec import JobSpec
from services.records import CheckpointRecord, PairRecord, SampleRecord
from workers import keys
from workers.context import Context

log = logging.getLogger(__name__)


def epoch_metrics(
    epoch: int,
    steps: Sequence[dict[str, Any]],
    pairs: Sequence[PairRecord],
    kept: Sequence[PairRecord],
    before: dict[str, float],
    samples: Sequence[SampleRecord],
) -> dict[str, Any]:
    """The epoch's metrics, before the held-out evaluation.

    steps: the optimizer steps' metrics (`dataclasses.asdict(StepMetrics)`); pairs: every pair of
    the epoch, target-scored; kept: those the pair filter kept; before: `Trainer.pair_metrics` on
    the kept pairs under the weights they were not yet trained on (reported `heldout_pairs_*`).
    Each key of the steps' `extra` dicts is reported as its mean over the epoch's steps.
    """
    gains = [p.target_score - p.base_score for p in pairs if p.target_score is not None]
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "policy_version": epoch + 1,
        "optimizer_steps": len(steps),
        "loss": _mean([s["loss"] for s in steps]),
        "margin": _mean([s["margin"] for s in steps]),
        "mean_sample_score": _mean([s.score for s in samples if s.score is not None]),
        "pairs_total": len(pairs),
        "pairs_trained": len(kept),
        # pair visits over the pairs kept: how often each was seen (the budget that max_passes caps)
        "pair_passes": sum(s["num_pairs"] for s in steps) / len(kept) if kept else None,
        "target_win_rate": _mean([1.0 if g > 0 else 0.0 for g in gains]),
        "mean_target_gain": _mean(gains),
    }
    extra_keys = sorted({k for s in steps for k in s.get("extra") or {}} - metrics.keys())
    for k in extra_keys:
        metrics[k] = _mean([float(s["extra"][k]) for s in steps if k in (s.get("extra") or {})])
    metrics.update({f"heldout_pairs_{k}": float(v) for k, v in before.items()})
    return metrics


def publish(ctx: Context, job_id: str, spec: JobSpec, epoch: int, model: Any,
            metrics: dict[str, Any]) -> dict[str, Any]:
    """Policy version epoch+1: its LoRA object and checkpoint record, its held-out score beside the
    untrained model's on the same prompts and noise (`heldout_score_base`, measured at the first
    epoch and repeated in every epoch's metrics), the train-caption evaluation (`train_captions`),
    the metrics. Returns the metrics as published."""
    from dfusion_core.lora import adapters_disabled, lora_bytes

    version = epoch + 1
    key = keys.checkpoint_key(job_id, version)
    ctx.store.put(key, lora_bytes(model.unet))
    ctx.state.put_checkpoint(job_id, version, CheckpointRecord(version=version, key=key, epoch=epoch).dump())
    metrics = {**metrics, "heldout_score": heldout(ctx, spec, model), "heldout_score_base": None}
    if epoch > 0:  # the untrained model's score is measured once; every epoch carries it for comparison
        metrics["heldout_score_base"] = next((m["heldout_score_base"] for m in ctx.state.get_metrics(job_id)
                                             if m.get("heldout_score_base") is not None), None)
    if metrics["heldout_score_base"] is None:
        with adapters_disabled(model.unet):
            metrics["heldout_score_base"] = heldout(ctx, spec, model)
    metrics.update(train_captions(ctx, job_id, spec, model, version))
    ctx.state.append_metrics(job_id, metrics)
    return metrics


def heldout(ctx: Context, spec: JobSpec, model: Any) -> float:
    """Mean score on the held-out prompts (the spec's, else the shipped test split's first four)."""
    from dfusion_core.evaluation import evaluate, load_prompts

    prompts = spec.eval_prompts or [p.text for p in load_prompts(split="test")][:4]
    seeds = [keys.derive_seed(spec.seed, "eval", i) for i in range(spec.eval_seeds)]
    return float(evaluate(model, ctx.runtime.scorer(spec.scorer), prompts, seeds, spec.sampling))


def train_captions(ctx: Context, job_id: str, spec: JobSpec, model: Any, version: int) -> dict[str, Any]:
    """The before/after evaluation on the job's own prompts with fresh noise, {} when
    `train_eval_seeds` is 0. Every distinct prompt is sampled with `train_eval_seeds` seeds (derived
    under their own label: noise no sample of the job was drawn from, the same every epoch) by the
    current weights and by the untrained model (adapters off; its per-sample scores are measured
    once, stored, and reused by every epoch). Sample i of both is one (prompt, noise), so the
    difference is paired: `eval_diff_ci_low` / `_high` bound the mean of eval_score - eval_score_base
    (95 %, Student's t over the `eval_samples` pairs; None with a single pair)."""
    if not spec.train_eval_seeds:
        return {}
    from dfusion_core.evaluation import evaluate_scores
    from dfusion_core.lora import adapters_disabled
    from dfusion_core.stats import paired_ci

    prompts = list(dict.fromkeys(p.text for p in spec.prompts))
    seeds = [keys.derive_seed(spec.seed, "train_eval", i) for i in range(spec.train_eval_seeds)]
    scorer = ctx.runtime.scorer(spec.scorer)

    def scores() -> list[float]:
        return [float(x) for x in evaluate_scores(model, scorer, prompts, seeds, spec.sampling,
                                                  policy_version=version)]

    key = keys.train_eval_base_key(job_id)  # written by epoch 0 (over any older run's), read by the later ones
    base = json.loads(ctx.store.get(key)) if version > 1 and ctx.store.exists(key) else None
    # the slowest part of a small job (the toy preset's is half the demo): say what runs meanwhile
    what = f"{len(prompts)} prompt(s) x {len(seeds)} fresh seeds"
    if not isinstance(base, list) or len(base) != len(prompts) * len(seeds):
        log.info("job %s: scoring the untrained model on its own prompts, %s", job_id, what)
        with adapters_disabled(model.unet):
            base = scores()
        ctx.store.put(key, json.dumps(base).encode(), "application/json")
    log.info("job %s: scoring policy %d on its own prompts, %s", job_id, version, what)
    after = scores()
    ci = paired_ci(after, base)
    lo, hi = (None if math.isnan(ci[k]) else ci[k] for k in ("lo", "hi"))  # NaN: one pair, no interval
    return {"eval_score_base": _mean(base), "eval_score": _mean(after), "eval_diff_ci_low": lo,
            "eval_diff_ci_high": hi, "eval_samples": len(after)}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
