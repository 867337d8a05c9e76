"""The job's stages as plain functions over (state, store, dispatch, runtime).

Celery tasks (workers/celery_app.py) and the embedded runner call exactly these. Each stage:
validate -> fetch inputs -> one core call -> store outputs (deterministic keys) -> update
state -> enqueue what became ready. Fan-in is by exactly-once `mark_done`, never by chords; a
re-run member of a complete fan-in re-enqueues until the enqueue is confirmed (`_fan_in`).

Flow per epoch e (policy version e):
  sample(e, p, b) -> score(e, p, b) -> [all batches of prompt p scored] fuse(e, p, c)
  -> score_targets(e, p, c) (fused targets scored on their own images; plain pairs need none)
  -> [every chunk of every prompt has scored pairs] train(e): resumes train(e-1)'s trainer,
     trains the pairs that carry a preference, all prompts mixed
  -> publish version e+1, evaluate, then epoch e+1 or done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dfusion_core import pipeline
from dfusion_core.errors import TrajectoryError
from dfusion_core.items import map_items
from dfusion_core.pairs import PairPlan, carries_preference, select_fusion_pairs, select_plain_pairs
from dfusion_core.storage import BlobStore
from dfusion_core.trajectories import Trajectory
from services.jobspec import JobSpec
from services.queue import FUSE, SAMPLE, SCORE, SCORE_TARGETS, TRAIN
from services.records import PairRecord, SampleRecord, load_all
from services.state import JobStatus, JobStore
from services.storage import io_timer
from workers import keys, publish
from workers.images import mask_image, png_bytes, png_tensor
from workers.keys import derive_seed
from workers.runtime import Runtime

log = logging.getLogger(__name__)

Dispatch = Callable[..., None]  # dispatch(task_name, **kwargs)

# Fan-in scopes: what completes them, and what their completer enqueues.
EPOCH_START = "epoch-start-{epoch}"  # the epoch's one start -> every sample batch
SCORED = "scored-{unit}"  # every sample batch of a prompt scored -> its fuse chunks
PAIRS_SCORED = "pairs-scored-e{epoch}"  # every chunk of every prompt has target-scored pairs -> train(e)
TRAINED = "trained-{unit}"  # train(e)'s commit: its optimizer steps are counted once


@dataclass
class Context:
    state: JobStore  # RedisJobStore in the Celery workers, MemoryJobStore in the embedded runner
    store: BlobStore
    dispatch: Dispatch
    runtime: Runtime


def _spec(ctx: Context, job_id: str) -> JobSpec | None:
    """The job's spec, or None when the job should do no more work (cancelled, failed, done)."""
    job = ctx.state.get_job(job_id)
    if job.status.terminal:
        log.info("job %s is %s: skipping", job_id, job.status.value)
        return None
    return JobSpec.model_validate(job.spec)


def _fan_in(ctx: Context, job_id: str, scope: str, member: str, expected: int) -> bool:
    """Whether this call must enqueue what follows `scope` (then call `_sent` once it has).

    True for the call that completes the scope, and again for a re-run of a member of a complete
    scope whose enqueue was never confirmed: the completer may have died (or lost the broker)
    between firing and enqueueing, and nothing else would ever enqueue the next stage. Stages are
    idempotent, so the rare duplicate (a member re-run while the completer is still enqueueing)
    only costs time; confirmed scopes are not re-enqueued, so redeliveries never cascade.
    """
    if ctx.state.mark_done(job_id, scope, member, expected):
        return True
    return ctx.state.done_count(job_id, scope) >= expected and ctx.state.done_count(job_id, f"{scope}-sent") == 0


def _sent(ctx: Context, job_id: str, scope: str) -> None:
    ctx.state.mark_done(job_id, f"{scope}-sent", "ok", 1)


def _batches(spec: JobSpec) -> int:
    return -(-spec.samples_per_prompt // spec.sampling.batch_size)


def _chunks(spec: JobSpec) -> int:
    return -(-spec.expected_counts().pairs_per_prompt // spec.sampling.batch_size)


def _chunk_range(spec: JobSpec, chunk: int) -> range:
    """Pair indices (within a prompt) of fuse / score_targets chunk `chunk`."""
    size = spec.sampling.batch_size
    return range(chunk * size, min((chunk + 1) * size, spec.expected_counts().pairs_per_prompt))


# --- job start and epochs --------------------------------------------------------------------
def start_job(ctx: Context, job_id: str) -> None:
    job = ctx.state.get_job(job_id)
    if job.status == JobStatus.QUEUED:
        ctx.state.set_status(job_id, JobStatus.RUNNING)
    if _spec(ctx, job_id) is not None:
        start_epoch(ctx, job_id, 0)


def start_epoch(ctx: Context, job_id: str, epoch: int) -> None:
    spec = _spec(ctx, job_id)
    scope = EPOCH_START.format(epoch=epoch)
    if spec is None or not _fan_in(ctx, job_id, scope, "go", 1):
        return
    for p in range(len(spec.prompts)):
        for b in range(_batches(spec)):
            ctx.dispatch(SAMPLE, job_id=job_id, epoch=epoch, prompt=p, batch=b)
    _sent(ctx, job_id, scope)


# --- sample ------------------------------------------------------------------------------------
def sample(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    size = spec.sampling.batch_size
    indices = range(batch * size, min((batch + 1) * size, spec.samples_per_prompt))
    text = spec.prompts[prompt].text
    seeds = [derive_seed(spec.seed, "sample", epoch, prompt, i) for i in indices]
    with ctx.runtime.lock:
        model = ctx.runtime.policy(spec.model, ctx.store, job_id, epoch)
        trajs = pipeline.sample(model, [text] * len(seeds), spec.sampling, seeds=seeds, policy_version=epoch)
    objects = []
    for i, traj in zip(indices, trajs, strict=True):
        sid = keys.sample_id(epoch, prompt, i)
        assert traj.image is not None
        objects += [(keys.trajectory_key(job_id, sid), traj.to_bytes(), "application/octet-stream"),
                    (keys.image_key(job_id, sid), png_bytes(traj.image), "image/png")]
    _put_all(ctx, objects)
    for i, seed in zip(indices, seeds, strict=True):
        sid = keys.sample_id(epoch, prompt, i)
        ctx.state.put_sample(job_id, sid, SampleRecord(
            id=sid, epoch=epoch, prompt_index=prompt, index=i, seed=seed, policy_version=epoch, prompt=text,
            trajectory_key=keys.trajectory_key(job_id, sid), image_key=keys.image_key(job_id, sid),
        ).dump())
    ctx.dispatch(SCORE, job_id=job_id, epoch=epoch, prompt=prompt, batch=batch)


def _put_all(ctx: Context, objects: list[tuple[str, bytes, str]]) -> None:
    """Store a task's objects concurrently: each put is a round trip, and a task has a dozen."""
    with io_timer(), ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda o: ctx.store.put(*o), objects))


def _get_all(ctx: Context, keys_: list[str]) -> list[bytes]:
    with io_timer(), ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(ctx.store.get, keys_))


# --- score: samples, then fused targets --------------------------------------------------------
def _score_images(ctx: Context, spec: JobSpec, image_keys: list[str], text: str) -> list[float]:
    """The job's scorer on stored PNGs, all against the prompt `text`."""
    import torch

    images = torch.stack([png_tensor(b) for b in _get_all(ctx, image_keys)])
    with ctx.runtime.lock:
        scores = ctx.runtime.scorer(spec.scorer).score(images, [text] * len(image_keys))
    return [float(s) for s in scores.tolist()]


def score(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    size = spec.sampling.batch_size
    sids = [keys.sample_id(epoch, prompt, i)
            for i in range(batch * size, min((batch + 1) * size, spec.samples_per_prompt))]
    scores = _score_images(ctx, spec, [keys.image_key(job_id, sid) for sid in sids], spec.prompts[prompt].text)
    for sid, s in zip(sids, scores, strict=True):
        ctx.state.update_sample(job_id, sid, {"score": s})
    scope = SCORED.format(unit=keys.prompt_unit(epoch, prompt))
    if _fan_in(ctx, job_id, scope, f"b{batch}", _batches(spec)):
        for c in range(_chunks(spec)):
            ctx.dispatch(FUSE, job_id=job_id, epoch=epoch, prompt=prompt, chunk=c)
        _sent(ctx, job_id, scope)


def score_targets(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Score the fused targets of one chunk of pairs on their own images: `target_score`."""
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    pids = [keys.pair_id(epoch, prompt, k) for k in _chunk_range(spec, chunk)]
    scores = _score_images(ctx, spec, [keys.target_image_key(job_id, pid) for pid in pids], spec.prompts[prompt].text)
    for pid, s in zip(pids, scores, strict=True):
        ctx.state.update_pair(job_id, pid, {"target_score": s})
    _pairs_scored(ctx, job_id, spec, epoch, prompt, chunk)


def _pairs_scored(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int, chunk: int) -> None:
    """A chunk's pairs carry their target scores; the last chunk of the epoch enqueues train(e)."""
    scope = PAIRS_SCORED.format(epoch=epoch)
    if _fan_in(ctx, job_id, scope, f"p{prompt}-c{chunk}", len(spec.prompts) * _chunks(spec)):
        ctx.dispatch(TRAIN, job_id=job_id, epoch=epoch)
        _sent(ctx, job_id, scope)


# --- fuse --------------------------------------------------------------------------------------
def _prompt_samples(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int) -> list[SampleRecord]:
    raw = [ctx.state.get_sample(job_id, keys.sample_id(epoch, prompt, i)) for i in range(spec.samples_per_prompt)]
    records = [None if r is None else SampleRecord.load(r) for r in raw]
    missing = [i for i, r in enumerate(records) if r is None or r.score is None]
    if missing:
        raise RuntimeError(f"samples {missing} of prompt {prompt} are not scored yet")
    return records  # type: ignore[return-value]


def _trajectory(key: str, data: bytes) -> Trajectory:
    """A stored trajectory; a corrupt one fails the job with an error naming its object."""
    try:
        return Trajectory.from_bytes(data)
    except TrajectoryError as exc:
        raise TrajectoryError(f"object {key}: {exc}") from exc


def fuse(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Select the prompt's pairs and store this chunk's: D-Fusion targets (then scored by
    score_targets), or plain pairs, whose winner is a scored sample already."""
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    records = _prompt_samples(ctx, job_id, spec, epoch, prompt)
    plain = spec.training.pairs == "plain"
    scores = [r.score for r in records if r.score is not None]  # all of them: _prompt_samples checked
    plans = (select_plain_pairs if plain else select_fusion_pairs)(scores)
    plans = [plans[k] for k in _chunk_range(spec, chunk)]
    if plain:
        for plan in plans:
            win = records[plan.reference]
            _put_pair(ctx, job_id, plan, records, target_key=win.trajectory_key, target_image_key=win.image_key,
                      mask_key=None, target_score=win.score)
        _pairs_scored(ctx, job_id, spec, epoch, prompt, chunk)
        return
    _fuse_chunk(ctx, job_id, spec, prompt, plans, records)
    ctx.dispatch(SCORE_TARGETS, job_id=job_id, epoch=epoch, prompt=prompt, chunk=chunk)


def _fuse_chunk(ctx: Context, job_id: str, spec: JobSpec, prompt: int, plans: list[PairPlan],
                records: list[SampleRecord]) -> None:
    """Fuse the pairs under the policy version that sampled them; store targets, masks, records."""
    epoch = records[0].epoch
    needed = sorted({x for p in plans for x in (p.reference, p.base)})
    blobs = _get_all(ctx, [records[i].trajectory_key for i in needed])
    load = {i: _trajectory(records[i].trajectory_key, b) for i, b in zip(needed, blobs, strict=True)}
    ps = spec.prompts[prompt]
    with ctx.runtime.lock:
        model = ctx.runtime.policy(spec.model, ctx.store, job_id, epoch)
        items = map_items(model.tokenizer, ps.text, ps.items, ps.mask_thresholds)
        fused = pipeline.fuse_pairs(model, [load[p.reference] for p in plans], [load[p.base] for p in plans],
                                    [items] * len(plans), spec.fusion)
    objects = []
    for plan, fp in zip(plans, fused, strict=True):
        pid = keys.pair_id(epoch, prompt, plan.index)
        assert fp.target.image is not None
        mask = mask_image(fp.masks, fp.mask_resolution, tuple(fp.target.image.shape[:2]))
        objects += [(keys.target_key(job_id, pid), fp.target.to_bytes(), "application/octet-stream"),
                    (keys.target_image_key(job_id, pid), png_bytes(fp.target.image), "image/png"),
                    (keys.mask_key(job_id, pid), png_bytes(mask), "image/png")]
    _put_all(ctx, objects)
    for plan in plans:
        pid = keys.pair_id(epoch, prompt, plan.index)
        _put_pair(ctx, job_id, plan, records, target_key=keys.target_key(job_id, pid),
                  target_image_key=keys.target_image_key(job_id, pid), mask_key=keys.mask_key(job_id, pid))


def _put_pair(ctx: Context, job_id: str, plan: PairPlan, records: list[SampleRecord], *, target_key: str,
              target_image_key: str, mask_key: str | None, target_score: float | None = None) -> None:
    ref, base = records[plan.reference], records[plan.base]
    assert ref.score is not None and base.score is not None
    pid = keys.pair_id(base.epoch, base.prompt_index, plan.index)
    ctx.state.put_pair(job_id, pid, PairRecord(
        id=pid, epoch=base.epoch, prompt_index=base.prompt_index, index=plan.index, prompt=base.prompt,
        policy_version=base.policy_version, reference=ref.id, base=base.id, reference_score=ref.score,
        base_score=base.score, reference_image_key=ref.image_key, base_image_key=base.image_key,
        base_trajectory_key=base.trajectory_key, target_key=target_key, target_image_key=target_image_key,
        mask_key=mask_key, target_score=target_score,
    ).dump())


# --- train -------------------------------------------------------------------------------------
def train(ctx: Context, job_id: str, epoch: int) -> None:
    """The epoch's one training unit, then epoch e+1 (or the job's end).

    A delivery of a committed unit only redoes what follows the commit (its outputs are all
    stored); an uncommitted one recomputes from train(e-1)'s state and overwrites the same keys.
    """
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    scope = TRAINED.format(unit=keys.train_unit(epoch))
    if ctx.state.done_count(job_id, scope) == 0:
        steps = _train_unit(ctx, job_id, spec, epoch)
        if ctx.state.mark_done(job_id, scope, "commit", 1):
            ctx.state.incr_count(job_id, "trained_steps", steps)
    ctx.state.advance_policy(job_id, epoch, epoch + 1)
    if epoch + 1 < spec.epochs:
        start_epoch(ctx, job_id, epoch + 1)
    elif not ctx.state.get_job(job_id).status.terminal:
        ctx.state.set_status(job_id, JobStatus.SUCCEEDED)


def _train_unit(ctx: Context, job_id: str, spec: JobSpec, epoch: int) -> int:
    """Train the epoch's pairs that carry a preference (all prompts, shuffled together) on the
    state train(e-1) saved; save the trainer, publish version e+1. Returns the optimizer steps."""
    import json
    from dataclasses import asdict

    from dfusion_core.checkpoint import save_checkpoint

    pairs = _epoch_pairs(ctx, job_id, spec, epoch)
    kept = [p for p in pairs
            if p.target_score is not None and carries_preference(p.target_score, p.base_score, spec.training.pair_filter)]
    if not kept:
        log.warning("job %s epoch %d: pair filter %r kept none of %d pairs; version %d keeps the weights",
                    job_id, epoch, spec.training.pair_filter, len(pairs), epoch + 1, extra={"job_id": job_id})
    prefix = keys.trainer_state_prefix(job_id, epoch)
    with ctx.runtime.lock:
        trainer = _trainer(ctx, spec, job_id, epoch)
        ctx.runtime.mark_modified(spec.model, ("train", job_id, epoch))
        train_pairs = _train_pairs(ctx, kept)
        before = trainer.pair_metrics(train_pairs) if train_pairs else {}  # on pairs the weights have not seen
        steps = [asdict(m) for m in trainer.train_epoch(train_pairs)] if train_pairs else []
        save_checkpoint(ctx.store, prefix, trainer)
        ctx.store.put(f"{prefix}/metrics.json", json.dumps(steps).encode(), "application/json")
        samples = [s for s in load_all(SampleRecord, ctx.state.list_samples(job_id)) if s.epoch == epoch]
        metrics = publish.epoch_metrics(epoch, steps, pairs, kept, before, samples)
        publish.publish(ctx, job_id, spec, epoch, trainer.model, metrics)
    kept_ids = {p.id for p in kept}
    for p in pairs:
        ctx.state.update_pair(job_id, p.id, {"trained": p.id in kept_ids})
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


def _trainer(ctx: Context, spec: JobSpec, job_id: str, epoch: int):
    """A fresh trainer for epoch 0; for epoch e > 0 the one train(e-1) saved (weights and AdamW state)."""
    from dfusion_core.checkpoint import latest_version, load_checkpoint
    from dfusion_core.lora import ADAPTER, has_lora
    from dfusion_core.training import Trainer

    model = ctx.runtime.model(spec.model)
    if has_lora(model.unet):
        model.unet.delete_adapters(ADAPTER)
    if epoch == 0:
        return Trainer(model, spec.training, seed=derive_seed(spec.seed, "train"),
                       lora_seed=derive_seed(spec.seed, "lora"))
    prefix = keys.trainer_state_prefix(job_id, epoch - 1)
    version = latest_version(ctx.store, prefix)
    if version is None:
        raise RuntimeError(f"training state of epoch {epoch - 1} is missing under {prefix}")
    return load_checkpoint(ctx.store, prefix, version, model, config=spec.training)


def _train_pairs(ctx: Context, records: list[PairRecord]) -> list:
    """TrainPairs: winner = the target trajectory, loser = the base's; rewards are their own scores."""
    from dfusion_core.training import TrainPair

    names = [key for rec in records for key in (rec.target_key, rec.base_trajectory_key)]
    trajs = [_trajectory(key, data) for key, data in zip(names, _get_all(ctx, names), strict=True)]
    out = []
    for k, rec in enumerate(records):
        assert rec.target_score is not None  # _epoch_pairs checked
        out.append(TrainPair(winner=trajs[2 * k], loser=trajs[2 * k + 1], winner_reward=rec.target_score,
                             loser_reward=rec.base_score))
    return out
