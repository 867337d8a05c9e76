"""The score stage (a batch of samples) and score_targets (a chunk of fused targets, on their own
images)."""

from __future__ import annotations

from services.jobspec import JobSpec
from workers import flow, keys
from workers.images import png_tensor
from workers.stages.common import Context, advance, get_all, job_spec


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
    jf = flow.JobFlow.of(spec)
    sids = [keys.sample_id(epoch, prompt, i) for i in jf.sample_range(batch)]
    scores = _score_images(ctx, spec, [keys.image_key(job_id, sid) for sid in sids], spec.prompts[prompt].text)
    for sid, s in zip(sids, scores, strict=True):
        ctx.state.update_sample(job_id, sid, {"score": s})
    advance(ctx, job_id, jf, flow.Scored(epoch, prompt, batch))


def score_targets(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Score the fused targets of one chunk of pairs on their own images: `target_score`."""
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    pids = [keys.pair_id(epoch, prompt, k) for k in jf.chunk_range(chunk)]
    scores = _score_images(ctx, spec, [keys.target_image_key(job_id, pid) for pid in pids], spec.prompts[prompt].text)
    for pid, s in zip(pids, scores, strict=True):
        ctx.state.update_pair(job_id, pid, {"target_score": s})
    advance(ctx, job_id, jf, flow.TargetsScored(epoch, prompt, chunk))
