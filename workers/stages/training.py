"""The train stage: the epoch's one training unit over the pairs that carry a preference, resumed
from train(e-1)'s saved trainer; it publishes policy version e+1 and starts epoch e+1."""

from __future__ import annotations

import logging

from dfusion_core.pairs import carries_preference
from services.jobspec import JobSpec
from services.records import PairRecord, SampleRecord, load_all
from services.state import JobStatus
from workers import flow, keys, publish, tracking
from workers.keys import derive_seed
from workers.stages.common import Context, advance, job_spec, load_trajectories

log = logging.getLogger(__name__)


def train(ctx: Context, job_id: str, epoch: int) -> None:
    """The epoch's one training unit, then epoch e+1 (or the job's end).

    A delivery of a committed unit only redoes what follows the commit (its outputs are all
    stored); an uncommitted one recomputes from train(e-1)'s state and overwrites the same keys.
    """
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf, commit = flow.JobFlow.of(spec), flow.train_commit(epoch)
    if ctx.state.done_count(job_id, commit.scope) == 0:
        steps = _train_unit(ctx, job_id, spec, epoch)
        if ctx.state.mark_done(job_id, commit.scope, commit.member, commit.expected):
            ctx.state.incr_count(job_id, "trained_steps", steps)
    ctx.state.advance_policy(job_id, epoch, epoch + 1)
    if job_spec(ctx, job_id) is None:  # cancelled (or failed) while training
        return
    if jf.finishes_job(flow.Trained(epoch)):
        ctx.state.set_status(job_id, JobStatus.SUCCEEDED)
    else:
        advance(ctx, job_id, jf, flow.Trained(epoch))


def _train_unit(ctx: Context, job_id: str, spec: JobSpec, epoch: int) -> int:
    """Train the epoch's pairs that carry a preference (all prompts, shuffled together) on the
    state train(e-1) saved; save the trainer, publish version e+1. Returns the optimizer steps."""
    import json
    from dataclasses import asdict

    from dfusion_core.checkpoint import train_unit

    pairs = _epoch_pairs(ctx, job_id, spec, epoch)
    kept = [p for p in pairs
            if p.target_score is not None and carries_preference(p.target_score, p.base_score, spec.training.pair_filter)]
    if not kept:
        log.warning("job %s epoch %d: pair filter %r kept none of %d pairs; version %d keeps the weights",
                    job_id, epoch, spec.training.pair_filter, len(pairs), epoch + 1, extra={"job_id": job_id})
    prefix = keys.trainer_state_prefix(job_id, epoch)
    train_pairs = _train_pairs(ctx, kept)
    with ctx.runtime.lock:
        model = ctx.runtime.model(spec.model_ref)
        ctx.runtime.mark_modified(spec.model_ref, ("train", job_id, epoch))
        unit = train_unit(model, spec.training, train_pairs, store=ctx.store, save_to=prefix,
                          resume_from=keys.trainer_state_prefix(job_id, epoch - 1) if epoch > 0 else None,
                          seed=derive_seed(spec.seed, "train"), lora_seed=derive_seed(spec.seed, "lora"))
        steps = [asdict(m) for m in unit.steps]
        ctx.store.put(f"{prefix}/metrics.json", json.dumps(steps).encode(), "application/json")
        samples = [s for s in load_all(SampleRecord, ctx.state.list_samples(job_id)) if s.epoch == epoch]
        metrics = publish.epoch_metrics(epoch, steps, pairs, kept, unit.before, samples)
        published = publish.publish(ctx, job_id, spec, epoch, unit.trainer.model, metrics)
    tracking.report_epoch(ctx.store.get, job_id, spec.report_to, published, steps, pairs)
    kept_ids = {p.id for p in kept}
    ctx.state.update_pairs(job_id, {p.id: {"trained": p.id in kept_ids} for p in pairs})
    return len(steps)


def _epoch_pairs(ctx: Context, job_id: str, spec: JobSpec, epoch: int) -> list[PairRecord]:
    """Every pair of the epoch, in (prompt, index) order; each must carry its target's score."""
    raw = ctx.state.list_pairs(job_id)
    n = spec.expected_counts().pairs_per_prompt
    ids = [keys.pair_id(epoch, p, k) for p in range(len(spec.prompts)) for k in range(n)]
    pairs = [PairRecord.load(raw[pid]) for pid in ids if pid in raw]
    unscored = sorted(set(ids) - {p.id for p in pairs if p.target_score is not None})
    if unscored:
        raise RuntimeError(f"{len(unscored)} pairs of epoch {epoch} have no target score yet, e.g. {unscored[0]}")
    return pairs


def _train_pairs(ctx: Context, records: list[PairRecord]) -> list:
    """TrainPairs: winner = the target trajectory, loser = the base's; rewards are their own scores.
    Each bundle the pairs name is fetched once (a legacy job's plain keys load as whole objects)."""
    from dfusion_core.training import TrainPair

    trajs = load_trajectories(ctx, [ref for rec in records for ref in (rec.target_key, rec.base_trajectory_key)])
    out = []
    for k, rec in enumerate(records):
        assert rec.target_score is not None  # _epoch_pairs checked
        out.append(TrainPair(winner=trajs[2 * k], loser=trajs[2 * k + 1], winner_reward=rec.target_score,
                             loser_reward=rec.base_score))
    return out
