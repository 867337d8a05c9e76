"""Job start and the sample stage: one batch of a prompt's samples under the policy version of
the epoch, stored as one trajectory bundle and a PNG per sample (galleries and direct URLs show
those PNGs)."""

from __future__ import annotations

from dfusion_core import pipeline
from dfusion_core.trajectories import pack_trajectories
from services.records import SampleRecord
from services.state import JobStatus
from workers import flow, keys
from workers.images import png_bytes
from workers.keys import derive_seed
from workers.stages.common import Context, advance, job_spec, put_all


def start_job(ctx: Context, job_id: str) -> None:
    job = ctx.state.get_job(job_id)
    if job.status == JobStatus.QUEUED:
        ctx.state.set_status(job_id, JobStatus.RUNNING)
    spec = job_spec(ctx, job_id)
    if spec is not None:
        advance(ctx, job_id, flow.JobFlow.of(spec), flow.JobStarted())


def sample(ctx: Context, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    indices = jf.sample_range(batch)
    text = spec.prompts[prompt].text
    seeds = [derive_seed(spec.seed, "sample", epoch, prompt, i) for i in indices]
    with ctx.runtime.lock:
        model = ctx.runtime.policy(spec.model_ref, ctx.store, job_id, epoch)
        trajs = pipeline.sample(model, [text] * len(seeds), spec.sampling, seeds=seeds, policy_version=epoch)
    sids = [keys.sample_id(epoch, prompt, i) for i in indices]
    bundle = keys.sample_bundle_key(job_id, epoch, prompt, batch)
    objects = [(bundle, pack_trajectories(dict(zip(sids, trajs, strict=True))), "application/octet-stream")]
    for sid, traj in zip(sids, trajs, strict=True):
        assert traj.image is not None
        objects.append((keys.image_key(job_id, sid), png_bytes(traj.image), "image/png"))
    put_all(ctx, objects)
    ctx.state.put_samples(job_id, {sid: SampleRecord(
        id=sid, epoch=epoch, prompt_index=prompt, index=i, seed=seed, policy_version=epoch, prompt=text,
        trajectory_key=keys.member_ref(bundle, sid), image_key=keys.image_key(job_id, sid),
    ).dump() for i, sid, seed in zip(indices, sids, seeds, strict=True)})
    advance(ctx, job_id, jf, flow.Sampled(epoch, prompt, batch))
