"""The job's stages as plain functions over (state, store, dispatch, runtime).

Celery tasks (workers/celery_app.py) and the embedded runner call exactly these. Each stage:
validate -> fetch inputs -> one core call -> store outputs (deterministic keys) -> update
state -> enqueue what became ready. Fan-in is by exactly-once `mark_done`, never by chords; a
re-run member of a complete fan-in re-enqueues until the enqueue is confirmed (`_fan_in`).

Flow per epoch e (policy version e):
  sample(e, p, b) -> score(e, p, b) -> [all batches of p scored] fuse(e, p, c)
  -> [all chunks of p fused, and unit (e, p-1) trained] train(e, p)
  -> [last prompt] publish version e+1, evaluate, then epoch e+1 or done.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dfusion_core import pipeline
from dfusion_core.errors import TrajectoryError
from dfusion_core.items import map_items
from dfusion_core.pairs import select_fusion_pairs, select_plain_pairs
from dfusion_core.storage import BlobStore
from dfusion_core.trajectories import Trajectory
from services.jobspec import JobSpec
from services.state_types import JobStatus
from services.storage import io_timer
from workers import keys
from workers.images import mask_image, png_bytes, png_tensor
from workers.runtime import Runtime

log = logging.getLogger(__name__)

Dispatch = Callable[..., None]  # dispatch(task_name, **kwargs)


@dataclass
class Context:
    state: Any  # services.state.JobState or services.memstate.MemoryState
    store: BlobStore
    dispatch: Dispatch
    runtime: Runtime


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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
    return -(-(spec.samples_per_prompt // 2) // spec.sampling.batch_size)


# --- job start and epochs --------------------------------------------------------------------
def start_job(ctx: Context, job_id: str) -> None:
    job = ctx.state.get_job(job_id)
    if job.status == JobStatus.QUEUED:
        ctx.state.set_status(job_id, JobStatus.RUNNING)
    if _spec(ctx, job_id) is not None:
        start_epoch(ctx, job_id, 0)


def start_epoch(ctx: Context, job_id: str, epoch: int) -> None:
    spec = _spec(ctx, job_id)
    scope = f"epoch-start-{epoch}"
    if spec is None or not _fan_in(ctx, job_id, scope, "go", 1):
        return
    # unit (epoch, 0) trains on the state left by the previous epoch, which is complete by now
    ctx.state.mark_done(job_id, f"trainready-{keys.train_unit(epoch, 0)}", "prev", 2)
    for p in range(len(spec.prompts)):
        for b in range(_batches(spec)):
            ctx.dispatch("dfusion.sample", job_id=job_id, epoch=epoch, prompt=p, batch=b)
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
        tkey, ikey = keys.trajectory_key(job_id, sid), keys.image_key(job_id, sid)
        ctx.state.put_sample(job_id, sid, {
            "id": sid, "epoch": epoch, "prompt_index": prompt, "index": i, "seed": seed,
            "policy_version": epoch, "prompt": text, "trajectory_key": tkey, "image_key": ikey, "score": None,
        })
    ctx.dispatch("dfusion.score", job_id=job_id, epoch=epoch, prompt=prompt, batch=batch)


def _put_all(ctx: Context, objects: list[tuple[str, bytes, str]]) -> None:
    """Store a task's objects concurrently: each put is a round trip, and a task has a dozen."""
    with io_timer(), ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda o: ctx.store.put(*o), objects))


def _get_all(ctx: Context, keys_: list[str]) -> list[bytes]:
    with io_timer(), ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(ctx.store.get, keys_))


# --- score -------------------------------------------------------------------------------------
def score(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    import torch

    size = spec.sampling.batch_size
    sids = [keys.sample_id(epoch, prompt, i)
            for i in range(batch * size, min((batch + 1) * size, spec.samples_per_prompt))]
    images = torch.stack([png_tensor(b) for b in _get_all(ctx, [keys.image_key(job_id, sid) for sid in sids])])
    text = spec.prompts[prompt].text
    with ctx.runtime.lock:
        scores = ctx.runtime.scorer(spec.scorer).score(images, [text] * len(sids))
    for sid, s in zip(sids, scores.tolist(), strict=True):
        ctx.state.update_sample(job_id, sid, {"score": float(s)})
    scope = f"scored-{keys.train_unit(epoch, prompt)}"
    if _fan_in(ctx, job_id, scope, f"b{batch}", _batches(spec)):
        for c in range(_chunks(spec)):
            ctx.dispatch("dfusion.fuse", job_id=job_id, epoch=epoch, prompt=prompt, chunk=c)
        _sent(ctx, job_id, scope)


# --- fuse --------------------------------------------------------------------------------------
def _prompt_samples(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int) -> list[dict]:
    records = [ctx.state.get_sample(job_id, keys.sample_id(epoch, prompt, i)) for i in range(spec.samples_per_prompt)]
    missing = [i for i, r in enumerate(records) if r is None or r.get("score") is None]
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
    spec = _spec(ctx, job_id)
    if spec is None:
        return
    records = _prompt_samples(ctx, job_id, spec, epoch, prompt)
    scores = [r["score"] for r in records]
    plain = spec.training.pairs == "plain"
    plans = (select_plain_pairs if plain else select_fusion_pairs)(scores)
    size = spec.sampling.batch_size
    plans = plans[chunk * size : (chunk + 1) * size]
    needed = sorted({x for p in plans for x in (p.reference, p.base)})
    blobs = _get_all(ctx, [records[i]["trajectory_key"] for i in needed])
    load = {i: _trajectory(records[i]["trajectory_key"], b) for i, b in zip(needed, blobs, strict=True)}
    if plain:
        _store_plain_pairs(ctx, job_id, epoch, prompt, plans, records)
    else:
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
            _put_pair(ctx, job_id, epoch, prompt, plan, records, pid,
                      keys.target_key(job_id, pid), keys.target_image_key(job_id, pid), keys.mask_key(job_id, pid))
    scope = f"fused-{keys.train_unit(epoch, prompt)}"
    if _fan_in(ctx, job_id, scope, f"c{chunk}", _chunks(spec)):
        _train_ready(ctx, job_id, epoch, prompt, "fused")
        _sent(ctx, job_id, scope)


def _store_plain_pairs(ctx, job_id, epoch, prompt, plans, records) -> None:
    for plan in plans:
        pid = keys.pair_id(epoch, prompt, plan.index)
        win = records[plan.reference]
        _put_pair(ctx, job_id, epoch, prompt, plan, records, pid, win["trajectory_key"], win["image_key"], None)


def _put_pair(ctx, job_id, epoch, prompt, plan, records, pid, tkey, tikey, mkey) -> None:
    ref, base = records[plan.reference], records[plan.base]
    ctx.state.put_pair(job_id, pid, {
        "id": pid, "epoch": epoch, "prompt_index": prompt, "index": plan.index, "prompt": base["prompt"],
        "reference": ref["id"], "base": base["id"], "reference_score": ref["score"], "base_score": base["score"],
        "reference_image_key": ref["image_key"], "base_image_key": base["image_key"],
        "base_trajectory_key": base["trajectory_key"], "target_key": tkey, "target_image_key": tikey,
        "mask_key": mkey, "policy_version": epoch,
    })


def _train_ready(ctx: Context, job_id: str, epoch: int, prompt: int, member: str) -> None:
    scope = f"trainready-{keys.train_unit(epoch, prompt)}"
    if _fan_in(ctx, job_id, scope, member, 2):
        ctx.dispatch("dfusion.train", job_id=job_id, epoch=epoch, prompt=prompt)
        _sent(ctx, job_id, scope)


# --- train -------------------------------------------------------------------------------------
def _unit_prefix(job_id: str, unit: str) -> str:
    return f"{keys.trainer_prefix(job_id)}/{unit}"


def _previous_unit(spec: JobSpec, epoch: int, prompt: int) -> str | None:
    if prompt > 0:
        return keys.train_unit(epoch, prompt - 1)
    return keys.train_unit(epoch - 1, len(spec.prompts) - 1) if epoch > 0 else None


def _trainer(ctx: Context, spec: JobSpec, job_id: str, previous: str | None):
    from dfusion_core.checkpoint import latest_version, load_checkpoint
    from dfusion_core.lora import ADAPTER, has_lora
    from dfusion_core.training import Trainer

    model = ctx.runtime.model(spec.model)
    if has_lora(model.unet):
        model.unet.delete_adapters(ADAPTER)
    if previous is None:
        return Trainer(model, spec.training, seed=derive_seed(spec.seed, "train"),
                       lora_seed=derive_seed(spec.seed, "lora"))
    prefix = _unit_prefix(job_id, previous)
    version = latest_version(ctx.store, prefix)
    if version is None:
        raise RuntimeError(f"training state of unit {previous} is missing")
    return load_checkpoint(ctx.store, prefix, version, model, config=spec.training)


def _train_pairs(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int) -> list:
    from dfusion_core.training import TrainPair

    records = ctx.state.list_pairs(job_id)
    recs = [records[keys.pair_id(epoch, prompt, k)] for k in range(spec.samples_per_prompt // 2)]
    names = [key for rec in recs for key in (rec["target_key"], rec["base_trajectory_key"])]
    trajs = [_trajectory(key, data) for key, data in zip(names, _get_all(ctx, names), strict=True)]
    return [TrainPair(winner=trajs[2 * k], loser=trajs[2 * k + 1], winner_reward=float(rec["reference_score"]),
                      loser_reward=float(rec["base_score"])) for k, rec in enumerate(recs)]


def train(ctx: Context, job_id: str, epoch: int, prompt: int) -> None:
    """One training unit: this prompt's pairs of this epoch, on the state the previous unit left."""
    import json
    from dataclasses import asdict

    from dfusion_core.checkpoint import save_checkpoint

    spec = _spec(ctx, job_id)
    if spec is None:
        return
    unit = keys.train_unit(epoch, prompt)
    last = prompt == len(spec.prompts) - 1
    with ctx.runtime.lock:
        trainer = _trainer(ctx, spec, job_id, _previous_unit(spec, epoch, prompt))
        ctx.runtime.mark_modified(spec.model, ("train", job_id, unit))
        metrics = trainer.train_epoch(_train_pairs(ctx, job_id, spec, epoch, prompt))
        save_checkpoint(ctx.store, _unit_prefix(job_id, unit), trainer)
        ctx.store.put(f"{_unit_prefix(job_id, unit)}/metrics.json",
                      json.dumps([asdict(m) for m in metrics]).encode(), "application/json")
        if last:
            _publish(ctx, job_id, spec, epoch, trainer.model)
    # every side effect above is an idempotent overwrite; the commit below happens once
    if ctx.state.mark_done(job_id, f"trained-{unit}", "commit", 1):
        ctx.state.incr_count(job_id, "trained_steps", len(metrics))
    if not last:
        _train_ready(ctx, job_id, epoch, prompt + 1, "prev")
        return
    ctx.state.advance_policy(job_id, epoch, epoch + 1)
    if epoch + 1 < spec.epochs:
        start_epoch(ctx, job_id, epoch + 1)
    elif not ctx.state.get_job(job_id).status.terminal:
        ctx.state.set_status(job_id, JobStatus.SUCCEEDED)


def _publish(ctx: Context, job_id: str, spec: JobSpec, epoch: int, model) -> None:
    """Policy version epoch+1: its LoRA checkpoint, its held-out score, the epoch's metrics."""
    import json

    from dfusion_core.lora import adapters_disabled, lora_bytes

    version = epoch + 1
    key = keys.checkpoint_key(job_id, version)
    ctx.store.put(key, lora_bytes(model.unet))
    ctx.state.put_checkpoint(job_id, version, {"version": version, "key": key, "epoch": epoch})
    steps = []
    for p in range(len(spec.prompts)):
        steps += json.loads(ctx.store.get(f"{_unit_prefix(job_id, keys.train_unit(epoch, p))}/metrics.json"))
    samples = [r for r in ctx.state.list_samples(job_id).values() if r["epoch"] == epoch]
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "policy_version": version,
        "optimizer_steps": len(steps),
        "loss": _mean([s["loss"] for s in steps]),
        "margin": _mean([s["margin"] for s in steps]),
        "mean_sample_score": _mean([r["score"] for r in samples if r.get("score") is not None]),
        "heldout_score": _heldout(ctx, spec, model),
    }
    if epoch == 0:
        with adapters_disabled(model.unet):
            metrics["heldout_score_base"] = _heldout(ctx, spec, model)
    ctx.state.append_metrics(job_id, metrics)


def _heldout(ctx: Context, spec: JobSpec, model) -> float:
    from dfusion_core.evaluation import evaluate, load_prompts

    prompts = spec.eval_prompts or [p.text for p in load_prompts(split="test")][:4]
    seeds = [derive_seed(spec.seed, "eval", i) for i in range(spec.eval_seeds)]
    return float(evaluate(model, ctx.runtime.scorer(spec.scorer), prompts, seeds, spec.sampling))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
