"""The score stage (a batch of samples) and score_targets (a chunk of fused targets, on their own
images), with the fan-ins they complete."""

from __future__ import annotations

from services.jobspec import JobSpec
from services.queue import FUSE, TRAIN
from workers import keys
from workers.images import png_tensor
from workers.stages.common import (
    PAIRS_SCORED,
    SCORED,
    Context,
    batches,
    chunk_range,
    chunks,
    fan_in,
    get_all,
    job_spec,
    sent,
)


def _score_images(ctx: Context, spec: JobSpec, image_keys: list[str], text: str) -> list[float]:
    """The job's scorer on stored PNGs, all against the prompt `text`."""
    import torch

    images = torch.stack([png_tensor(b) for b in get_all(ctx, image_keys)])
    with ctx.runtime.lock:
        scores = ctx.runtime.scorer(spec.scorer).score(images, [text] * len(image_keys))
    return [float(s) for s in scores.tolist()]


def score(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    size = spec.sampling.batch_size
    sids = [keys.sample_id(epoch, prompt, i)
            for i in range(batch * size, min((batch + 1) * size, spec.samples_per_prompt))]
    scores = _score_images(ctx, spec, [keys.image_key(job_id, sid) for sid in sids], spec.prompts[prompt].text)
    for sid, s in zip(sids, scores, strict=True):
        ctx.state.update_sample(job_id, sid, {"score": s})
    scope = SCORED.format(unit=keys.prompt_unit(epoch, prompt))
    if fan_in(ctx, job_id, scope, f"b{batch}", batches(spec)):
        for c in range(chunks(spec)):
            ctx.dispatch(FUSE, job_id=job_id, epoch=epoch, prompt=prompt, chunk=c)
        sent(ctx, job_id, scope)


def score_targets(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Score the fused targets of one chunk of pairs on their own images: `target_score`."""
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    pids = [keys.pair_id(epoch, prompt, k) for k in chunk_range(spec, chunk)]
    scores = _score_images(ctx, spec, [keys.target_image_key(job_id, pid) for pid in pids], spec.prompts[prompt].text)
    for pid, s in zip(pids, scores, strict=True):
        ctx.state.update_pair(job_id, pid, {"target_score": s})
    pairs_scored(ctx, job_id, spec, epoch, prompt, chunk)


def pairs_scored(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int, chunk: int) -> None:
    """A chunk's pairs carry their target scores; the last chunk of the epoch enqueues train(e)."""
    scope = PAIRS_SCORED.format(epoch=epoch)
    if fan_in(ctx, job_id, scope, f"p{prompt}-c{chunk}", len(spec.prompts) * chunks(spec)):
        ctx.dispatch(TRAIN, job_id=job_id, epoch=epoch)
        sent(ctx, job_id, scope)
