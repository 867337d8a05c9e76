"""The score stage (a batch of samples) and score_targets (a chunk of fused targets, on their own
images). Each reads its task's one trajectory bundle, whose members carry their decoded images (the
same pixels as their PNGs), instead of one PNG per image."""

from __future__ import annotations

from dfusion_core.errors import TrajectoryError
from services.jobspec import JobSpec
from workers import flow, keys
from workers.stages.common import Context, advance, job_spec, load_trajectories


def _score_images(ctx: Context, spec: JobSpec, refs: list[str], text: str) -> list[float]:
    """The job's scorer on the images of the trajectories `refs` name, all against the prompt `text`."""
    import torch

    images = []
    for ref, traj in zip(refs, load_trajectories(ctx, refs), strict=True):
        if traj.image is None:
            raise TrajectoryError(f"trajectory {ref} has no image to score")
        images.append(traj.image)
    with ctx.runtime.lock:
        scores = ctx.runtime.scorer(spec.scorer).score(torch.stack(images), [text] * len(refs))
    return [float(s) for s in scores.tolist()]


def score(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    sids = [keys.sample_id(epoch, prompt, i) for i in jf.sample_range(batch)]
    bundle = keys.sample_bundle_key(job_id, epoch, prompt, batch)
    scores = _score_images(ctx, spec, [keys.member_ref(bundle, sid) for sid in sids], spec.prompts[prompt].text)
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
    bundle = keys.target_bundle_key(job_id, epoch, prompt, chunk)
    scores = _score_images(ctx, spec, [keys.member_ref(bundle, pid) for pid in pids], spec.prompts[prompt].text)
    for pid, s in zip(pids, scores, strict=True):
        ctx.state.update_pair(job_id, pid, {"target_score": s})
    advance(ctx, job_id, jf, flow.TargetsScored(epoch, prompt, chunk))
