"""The score stage (a batch of samples) and score_targets (a chunk of fused targets, on their own
images). Each reads its task's one trajectory bundle, whose members carry their decoded images (the
same pixels as their PNGs), instead of one PNG per image. A task whose objects a version before
bundles stored (a trajectory and a PNG each, no bundle) reads the PNGs instead, so a job running
across an upgrade goes on."""

from __future__ import annotations

from dfusion_core.errors import BlobNotFound, TrajectoryError
from services.jobspec import JobSpec
from workers import flow, keys
from workers.images import png_tensor
from workers.stages.common import Context, advance, get_all, job_spec, load_trajectories


def _score_images(ctx: Context, spec: JobSpec, refs: list[str], pngs: list[str], text: str) -> list[float]:
    """The job's scorer, against the prompt `text`, on the images of the trajectories `refs` name,
    or on the PNGs `pngs` (the same images, in order) when the bundle is not there."""
    import torch

    try:
        images = _bundle_images(ctx, refs)
    except BlobNotFound:
        # stored by a version before bundles; if the PNGs are missing too, that error fails the job
        images = [png_tensor(b) for b in get_all(ctx, pngs)]
    with ctx.runtime.lock:
        scores = ctx.runtime.scorer(spec.scorer).score(torch.stack(images), [text] * len(refs))
    return [float(s) for s in scores.tolist()]


def _bundle_images(ctx: Context, refs: list[str]) -> list:
    images = []
    for ref, traj in zip(refs, load_trajectories(ctx, refs), strict=True):
        if traj.image is None:
            raise TrajectoryError(f"trajectory {ref} has no image to score")
        images.append(traj.image)
    return images


def score(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    sids = [keys.sample_id(epoch, prompt, i) for i in jf.sample_range(batch)]
    bundle = keys.sample_bundle_key(job_id, epoch, prompt, batch)
    scores = _score_images(ctx, spec, [keys.member_ref(bundle, sid) for sid in sids],
                           [keys.image_key(job_id, sid) for sid in sids], spec.prompts[prompt].text)
    ctx.state.update_samples(job_id, {sid: {"score": s} for sid, s in zip(sids, scores, strict=True)})
    advance(ctx, job_id, jf, flow.Scored(epoch, prompt, batch))


def score_targets(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Score the fused targets of one chunk of pairs on their own images: `target_score`."""
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    pids = [keys.pair_id(epoch, prompt, k) for k in jf.chunk_range(chunk)]
    bundle = keys.target_bundle_key(job_id, epoch, prompt, chunk)
    scores = _score_images(ctx, spec, [keys.member_ref(bundle, pid) for pid in pids],
                           [keys.target_image_key(job_id, pid) for pid in pids], spec.prompts[prompt].text)
    ctx.state.update_pairs(job_id, {pid: {"target_score": s} for pid, s in zip(pids, scores, strict=True)})
    advance(ctx, job_id, jf, flow.TargetsScored(epoch, prompt, chunk))
